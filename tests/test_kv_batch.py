"""`llmos.wire.kv_batch.KvOutbox`: a turn's allocations and frees as the fewest messages,
in the order they were made; and a worker's kernel link sends them before anything else."""

from __future__ import annotations

import zmq

from llmos.processes import free_address
from llmos.wire import pb
from llmos.wire.envelope import body_names, unpack
from llmos.wire.kv_batch import MAX_KV_BATCH_CHANGES, KvOutbox
from workers.links import KernelLink

ACCEPTED = body_names(pb.KvBatch, pb.KernelHeartbeat)


def allocation(index: int) -> pb.KvAllocate:
    return pb.KvAllocate(worker_id="w", request_id=f"r{index}", num_blocks=1)


def test_nothing_queued_sends_nothing_and_one_change_goes_as_itself():
    outbox = KvOutbox()
    assert outbox.take() == []

    free = pb.KvFree(worker_id="w", request_id="r1")
    outbox.add(free)

    assert outbox.take() == [free] and len(outbox) == 0


def test_several_changes_go_as_one_batch_in_order():
    outbox = KvOutbox()
    outbox.add(allocation(1))
    outbox.add(pb.KvFree(worker_id="w", request_id="r0"))
    outbox.add(allocation(2))

    (message,) = outbox.take()

    assert isinstance(message, pb.KvBatch)
    assert [change.WhichOneof("change") for change in message.changes] == ["allocate", "free", "allocate"]
    assert [change.allocate.request_id or change.free.request_id for change in message.changes] == [
        "r1",
        "r0",
        "r2",
    ]


def test_a_turn_past_the_kernels_bound_is_cut_into_batches_it_takes():
    outbox = KvOutbox()
    for index in range(MAX_KV_BATCH_CHANGES + 2):
        outbox.add(allocation(index))

    first, second = outbox.take()

    assert len(first.changes) == MAX_KV_BATCH_CHANGES and len(second.changes) == 2
    assert second.changes[-1].allocate.request_id == f"r{MAX_KV_BATCH_CHANGES + 1}"


def test_a_workers_kernel_link_sends_the_queued_changes_before_any_other_message():
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    address = free_address()
    router.bind(address)
    router.setsockopt(zmq.RCVTIMEO, 10_000)  # a missing message fails the test, not hangs it
    link = KernelLink(context, zmq.Poller(), address, "w", 1.0, registration=pb.KernelRegister(worker_id="w"))
    try:
        link.reconnect()
        link.queue_change(pb.KvFree(worker_id="w", request_id="r1"))
        link.queue_change(pb.KvFree(worker_id="w", request_id="r2"))
        link.send(pb.KernelHeartbeat(worker_id="w"))
        received = [unpack(router.recv_multipart()[-1], ACCEPTED) for _ in range(2)]
        assert [name for name, _ in received] == ["kv_batch", "kernel_heartbeat"]
        assert [change.free.request_id for change in received[0][1].changes] == ["r1", "r2"]

        link.queue_change(pb.KvFree(worker_id="w", request_id="r3"))
        link.reconnect()  # what was queued for the old connection is dropped with it
        link.flush()
        link.send(pb.KernelHeartbeat(worker_id="w", num_running=1))
        name, heartbeat = unpack(router.recv_multipart()[-1], ACCEPTED)
        assert (name, heartbeat.num_running) == ("kernel_heartbeat", 1)
    finally:
        link.close()
        router.close(linger=0)
        context.term()
