"""`python -m kernel_svc` against peers that misbehave: subscribers flooding its
PUB, registrations and allocations past every bound, workers speaking for others,
raw bytes that are not ZeroMQ at all. The kernel must refuse with coded errors,
hold bounded memory, and keep serving the peers that behave."""

from __future__ import annotations

import socket as tcp_socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import zmq
from service_process import ask, dealer, receive, subscriber, wait_until
from test_kernel_service import (
    BLOCK_SIZE,
    HEARTBEAT_INTERVAL_MS,
    KERNEL_REPLIES,
    Kernel,
    allocate,
    batch,
    query_view,
    register,
    start_kernel,
    view_worker,
)

from llmos.wire import pack, pb
from llmos.wire.constants import RESOURCE_TOPIC
from llmos.wire.kv_batch import MAX_KV_BATCH_CHANGES

pytestmark = pytest.mark.e2e

# What a misbehaving peer may add to the kernel's resident memory: generous for a
# Python process and libzmq's allocator on a busy machine, and far below what these
# peers cost a kernel that holds what they send (a free list of 33 M blocks is over
# a gigabyte; libzmq's subscription trie costs tens of bytes per byte subscribed).
MAX_RSS_GROWTH_KB = 128 * 1024
MAX_BLOCKS_PER_WORKER = 1_048_576


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    with start_kernel(tmp_path_factory.mktemp("kernel-hostile"), HEARTBEAT_INTERVAL_MS) as kernel:
        yield kernel


@pytest.fixture
def socket(kernel: Kernel) -> Iterator[zmq.Socket]:
    with dealer(kernel.address) as socket:
        yield socket


def rss_kb(kernel: Kernel) -> int:
    with open(f"/proc/{kernel.service.process.pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1])


def make_register(worker_id: str = "w-ok", **fields: object) -> pb.KernelRegister:
    values: dict[str, object] = {
        "worker_id": worker_id,
        "models": ["tiny"],
        "device": "cpu",
        "kv_capacity_tokens": 4 * BLOCK_SIZE,
        "max_num_seqs": 4,
        **fields,
    }
    return pb.KernelRegister(**values)  # type: ignore[arg-type]


def expect_error(socket: zmq.Socket, message: object, code: int) -> pb.Error:
    name, error = ask(socket, message, KERNEL_REPLIES)  # type: ignore[arg-type]
    assert (name, error.code) == ("error", code), error
    return error


def first_view(sub: zmq.Socket) -> pb.ResourceView:
    name, view = receive(sub, {"resource_view"})
    assert name == "resource_view"
    return view


@contextmanager
def flooder(address: str, socket_type: int) -> Iterator[zmq.Socket]:
    """A SUB or XSUB that queues without limit, so no subscription is dropped on our side."""
    context = zmq.Context()
    socket = context.socket(socket_type)
    socket.setsockopt(zmq.SNDHWM, 0)
    socket.connect(address)
    try:
        yield socket
    finally:
        socket.close(linger=0)
        context.term()


# ---------------------------------------------------------------- the PUB


def serving_rss_kb(kernel: Kernel) -> int:
    """The kernel's RSS once it answers: measured earlier, it would count Python's start."""
    with dealer(kernel.address) as socket:
        query_view(socket)
    return rss_kb(kernel)


def test_subscription_floods_leave_memory_bounded_and_views_flowing(kernel: Kernel) -> None:
    before_kb = serving_rss_kb(kernel)
    with flooder(kernel.pub_address, zmq.XSUB) as huge, flooder(kernel.pub_address, zmq.SUB) as many:
        for i in range(16):  # frames past the kernel's subscription size: their connection is cut
            huge.send(b"\x01" + bytes([65 + i]) * (1 << 14))
        for i in range(200_000):  # 4 MB of distinct topics, each within the frame size
            many.setsockopt(zmq.SUBSCRIBE, b"t%06d" % i + b"x" * 13)
        wait_until(
            lambda: "dropping every subscriber's connection" in kernel.service.log_path.read_text(),
            "the kernel drops the flooding subscribers",
        )
    grown_kb = rss_kb(kernel) - before_kb
    assert grown_kb < MAX_RSS_GROWTH_KB, f"kernel grew by {grown_kb} kB"
    with subscriber(kernel.pub_address, RESOURCE_TOPIC) as normal:
        assert first_view(normal).block_size == BLOCK_SIZE


def test_a_subscriber_to_everything_gets_views(kernel: Kernel) -> None:
    with subscriber(kernel.pub_address, b"") as sub:
        assert sub.poll(30_000), "no view"
        assert sub.recv_multipart()[0] == RESOURCE_TOPIC


# ---------------------------------------------------------------- registration

ABSURD_REGISTRATIONS = {
    "no worker id": make_register(""),
    "worker id of 129 bytes": make_register("w" * 129),
    "unprintable worker id": make_register("w\x00x"),
    "no models": make_register(models=[]),
    "65 models": make_register(models=[f"m{i}" for i in range(65)]),
    "model name of 257 bytes": make_register(models=["m" * 257]),
    "uint32 max kv capacity": make_register(kv_capacity_tokens=2**32 - 1),
    "one block past the cap": make_register(kv_capacity_tokens=(MAX_BLOCKS_PER_WORKER + 1) * BLOCK_SIZE),
    "huge max_num_seqs": make_register(max_num_seqs=2**32 - 1),
    "huge memory": make_register(memory_bytes_total=2**64 - 1),
}


@pytest.mark.parametrize("message", ABSURD_REGISTRATIONS.values(), ids=ABSURD_REGISTRATIONS.keys())
def test_absurd_registrations_are_refused_invalid_argument(
    kernel: Kernel, socket: zmq.Socket, message: pb.KernelRegister
) -> None:
    before_kb = rss_kb(kernel)
    expect_error(socket, message, pb.INVALID_ARGUMENT)
    assert view_worker(query_view(socket), message.worker_id) is None
    assert rss_kb(kernel) - before_kb < MAX_RSS_GROWTH_KB


def test_workers_at_the_block_cap_cost_no_memory_per_block(kernel: Kernel, socket: zmq.Socket) -> None:
    before_kb = rss_kb(kernel)
    for i in range(32):  # 33 M blocks in all: a free list of them would be gigabytes
        name, reply = ask(
            socket,
            make_register(f"w-big-{i}", kv_capacity_tokens=MAX_BLOCKS_PER_WORKER * BLOCK_SIZE),
            KERNEL_REPLIES,
        )
        assert (name, reply.kv_blocks_total) == ("kernel_reply", MAX_BLOCKS_PER_WORKER)
    name, reply = allocate(socket, "w-big-0", "r1", 3)
    assert list(reply.block_ids) == [0, 1, 2]
    assert rss_kb(kernel) - before_kb < MAX_RSS_GROWTH_KB
    for i in range(32):  # no reply: the next answer is the view's
        socket.send(pack(pb.Disconnect(worker_id=f"w-big-{i}")))
    assert view_worker(query_view(socket), "w-big-0") is None


def test_registrations_past_max_workers_are_refused_unavailable(tmp_path: Path) -> None:
    with start_kernel(tmp_path, HEARTBEAT_INTERVAL_MS, "--max-workers", "2") as kernel:
        with dealer(kernel.address) as socket:
            register(socket, "w-1", num_blocks=2)
            register(socket, "w-2", num_blocks=2)
            error = expect_error(socket, make_register("w-3"), pb.UNAVAILABLE)
            assert error.retry_after_ms > 0, "the refusal says when a place may be free"
            register(socket, "w-2", num_blocks=4)  # registering again needs no new place
            assert [w.worker_id for w in query_view(socket).workers] == ["w-1", "w-2"]


# ---------------------------------------------------------------- KV requests

BAD_ALLOCATIONS = {
    "request id of 257 bytes": pb.KvAllocate(worker_id="w-alloc", request_id="r" * 257, num_blocks=1),
    "no request id": pb.KvAllocate(worker_id="w-alloc", num_blocks=1),
    "tenant of 257 bytes": pb.KvAllocate(
        worker_id="w-alloc", request_id="r1", num_blocks=1, tenant="t" * 257
    ),
    "blocks past the cap": pb.KvAllocate(worker_id="w-alloc", request_id="r1", num_blocks=2**32 - 1),
    "lease past a day": pb.KvAllocate(worker_id="w-alloc", request_id="r1", num_blocks=1, lease_ms=2**32 - 1),
}


@pytest.mark.parametrize("message", BAD_ALLOCATIONS.values(), ids=BAD_ALLOCATIONS.keys())
def test_allocations_past_their_bounds_are_refused(socket: zmq.Socket, message: pb.KvAllocate) -> None:
    register(socket, "w-alloc", num_blocks=4)
    expect_error(socket, message, pb.INVALID_ARGUMENT)
    assert view_worker(query_view(socket), "w-alloc").kv_blocks_used == 0


def test_a_worker_cannot_speak_for_another(kernel: Kernel, socket: zmq.Socket) -> None:
    register(socket, "w-owner", num_blocks=4)
    allocate(socket, "w-owner", "r1", 2)
    with dealer(kernel.address) as intruder:
        for message in (
            pb.KvFree(worker_id="w-owner", request_id="r1"),
            pb.KvAllocate(worker_id="w-owner", request_id="r2", num_blocks=1),
            pb.KvPrefixReport(worker_id="w-owner", block_hashes=[1, 2]),
            pb.KernelHeartbeat(worker_id="w-owner", num_running=3),
            pb.Disconnect(worker_id="w-owner", reason="not mine to say"),
        ):
            expect_error(intruder, message, pb.UNKNOWN_WORKER)
    owner = view_worker(query_view(socket), "w-owner")
    assert owner is not None
    assert (owner.kv_blocks_used, owner.num_running, list(owner.cached_prefix_hashes)) == (2, 0, [])
    name, reply = ask(socket, pb.KvFree(worker_id="w-owner", request_id="r1"), KERNEL_REPLIES)
    assert (name, reply.num_free_blocks) == ("kernel_reply", 4)


def test_batches_past_their_bound_or_with_empty_changes_are_refused_whole(socket: zmq.Socket) -> None:
    register(socket, "w-batch-bound", num_blocks=4)
    grant = pb.KvAllocate(worker_id="w-batch-bound", request_id="r1", num_blocks=1)
    too_many = batch(*[grant] * (MAX_KV_BATCH_CHANGES + 1))
    error = expect_error(socket, too_many, pb.INVALID_ARGUMENT)
    assert str(MAX_KV_BATCH_CHANGES) in error.message
    with_an_empty_change = batch(grant)
    with_an_empty_change.changes.add()  # neither an allocate nor a free
    error = expect_error(socket, with_an_empty_change, pb.INVALID_ARGUMENT)
    assert "change 1" in error.message
    assert view_worker(query_view(socket), "w-batch-bound").kv_blocks_used == 0  # nothing applied


def test_a_batch_that_would_list_too_many_block_ids_is_answered_within_its_bound(
    kernel: Kernel, socket: zmq.Socket
) -> None:
    """Each allocation's answer lists all the request's blocks: 1,024 renewals of a
    request holding 600,000 would make a reply of 600 M ids. The ones past the bound
    are refused unapplied, and the kernel's memory stays flat."""
    register(socket, "w-batch-big", num_blocks=MAX_BLOCKS_PER_WORKER)
    name, reply = allocate(socket, "w-batch-big", "r-big", 600_000)
    assert (name, len(reply.block_ids)) == ("kernel_reply", 600_000)
    before_kb = rss_kb(kernel)
    renew = pb.KvAllocate(worker_id="w-batch-big", request_id="r-big", num_blocks=0)
    free_other = pb.KvFree(worker_id="w-batch-big", request_id="r-none")

    name, reply = ask(socket, batch(renew, renew, free_other, *[renew] * 1000), KERNEL_REPLIES)

    assert name == "kv_batch_reply"
    first, second, freed, *rest = reply.results
    assert len(first.reply.block_ids) == 600_000
    assert (second.error.code, second.error.request_id) == (pb.INVALID_ARGUMENT, "r-big")
    assert "not applied" in second.error.message
    assert freed.WhichOneof("result") == "reply"  # a free lists nothing: still applied
    assert {result.error.code for result in rest} == {pb.INVALID_ARGUMENT}
    assert rss_kb(kernel) - before_kb < MAX_RSS_GROWTH_KB
    socket.send(pack(pb.Disconnect(worker_id="w-batch-big")))


def test_a_batch_cannot_speak_for_another_worker(kernel: Kernel, socket: zmq.Socket) -> None:
    register(socket, "w-batch-owner", num_blocks=4)
    allocate(socket, "w-batch-owner", "r1", 2)
    with dealer(kernel.address) as intruder:
        name, reply = ask(
            intruder,
            batch(
                pb.KvFree(worker_id="w-batch-owner", request_id="r1"),
                pb.KvAllocate(worker_id="w-batch-owner", request_id="r2", num_blocks=2),
            ),
            KERNEL_REPLIES,
        )
    assert name == "kv_batch_reply"
    assert [result.error.code for result in reply.results] == [pb.UNKNOWN_WORKER] * 2
    assert view_worker(query_view(socket), "w-batch-owner").kv_blocks_used == 2


def test_prefix_reports_are_refused_past_the_cap_and_cut_to_the_blocks(socket: zmq.Socket) -> None:
    register(socket, "w-prefix", num_blocks=8)
    expect_error(
        socket, pb.KvPrefixReport(worker_id="w-prefix", block_hashes=range(1_000_000)), pb.INVALID_ARGUMENT
    )
    assert list(view_worker(query_view(socket), "w-prefix").cached_prefix_hashes) == []
    socket.send(pack(pb.KvPrefixReport(worker_id="w-prefix", block_hashes=range(100, 120))))  # no reply
    assert list(view_worker(query_view(socket), "w-prefix").cached_prefix_hashes) == list(range(100, 108))


def test_tenant_usage_vanishes_when_the_tenant_holds_nothing(socket: zmq.Socket) -> None:
    register(socket, "w-tenant", num_blocks=4)
    name, _ = ask(
        socket,
        pb.KvAllocate(worker_id="w-tenant", request_id="r1", num_blocks=2, tenant="t-gone"),
        KERNEL_REPLIES,
    )
    assert name == "kernel_reply"
    assert "t-gone" in [t.tenant for t in query_view(socket).tenants]
    ask(socket, pb.KvFree(worker_id="w-tenant", request_id="r1"), KERNEL_REPLIES)
    assert "t-gone" not in [t.tenant for t in query_view(socket).tenants]


# ---------------------------------------------------------------- not ZeroMQ at all


@pytest.mark.parametrize("port", ["router", "pub"])
def test_raw_bytes_that_are_not_zmtp_leave_the_kernel_serving(kernel: Kernel, port: str) -> None:
    address = kernel.address if port == "router" else kernel.pub_address
    host, port_number = address.removeprefix("tcp://").rsplit(":", 1)
    for garbage in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\xff" + b"\x00" * 8 + b"\x7f" + b"\xa5" * 65536):
        with tcp_socket.create_connection((host, int(port_number)), timeout=5) as raw:
            raw.sendall(garbage)
    with dealer(kernel.address) as socket:
        assert query_view(socket).block_size == BLOCK_SIZE
    with subscriber(kernel.pub_address, RESOURCE_TOPIC) as sub:
        assert first_view(sub).block_size == BLOCK_SIZE
