"""`python -m kernel_svc` as a real process: commands over its ROUTER, views on its PUB."""

from __future__ import annotations

import json
import logging
import pstats
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq
from google.protobuf.message import Message
from service_process import (
    ServiceProcess,
    ask,
    bad_frames,
    dealer,
    receive,
    running_service,
    subscriber,
    wait_until,
)

from llmos.logs import JsonFormatter, log_fields
from llmos.processes import free_address
from llmos.wire import pack, pb
from llmos.wire.constants import RESOURCE_TOPIC

pytestmark = pytest.mark.e2e

BLOCK_SIZE = 16
# long enough that a test's worker never dies of a slow machine (dead after 6 s)
HEARTBEAT_INTERVAL_MS = 2000
FAST_HEARTBEAT_INTERVAL_MS = 100  # for the test that wants a worker to die (after 300 ms)
KERNEL_REPLIES = {"kernel_reply", "resource_view", "error", "kv_batch_reply"}


@dataclass
class Kernel:
    address: str
    pub_address: str
    service: ServiceProcess


@contextmanager
def start_kernel(log_dir: Path, heartbeat_interval_ms: int, *extra: str) -> Iterator[Kernel]:
    address, pub_address = (free_address() for _ in range(2))
    with running_service(
        "kernel_svc",
        "--kernel-bind",
        address,
        "--kernel-pub-bind",
        pub_address,
        "--block-size",
        str(BLOCK_SIZE),
        "--heartbeat-interval-ms",
        str(heartbeat_interval_ms),
        *extra,
        log_dir=log_dir,
    ) as service:
        yield Kernel(address, pub_address, service)


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    with start_kernel(tmp_path_factory.mktemp("kernel"), HEARTBEAT_INTERVAL_MS) as kernel:
        yield kernel


@pytest.fixture
def socket(kernel: Kernel) -> Iterator[zmq.Socket]:
    with dealer(kernel.address) as socket:
        yield socket


def register(socket: zmq.Socket, worker_id: str, num_blocks: int) -> pb.KernelReply:
    name, reply = ask(
        socket,
        pb.KernelRegister(
            worker_id=worker_id,
            models=["tiny"],
            device="cpu",
            kv_capacity_tokens=num_blocks * BLOCK_SIZE,
            max_num_seqs=4,
        ),
        KERNEL_REPLIES,
    )
    assert name == "kernel_reply", reply
    return reply


def allocate(socket: zmq.Socket, worker_id: str, request_id: str, num_blocks: int) -> tuple[str, Message]:
    return ask(
        socket,
        pb.KvAllocate(worker_id=worker_id, request_id=request_id, num_blocks=num_blocks),
        KERNEL_REPLIES,
    )


def query_view(socket: zmq.Socket) -> pb.ResourceView:
    name, view = ask(socket, pb.ResourceQuery(), KERNEL_REPLIES)
    assert name == "resource_view", view
    return view


def view_worker(view: pb.ResourceView, worker_id: str) -> pb.WorkerResources | None:
    return next((worker for worker in view.workers if worker.worker_id == worker_id), None)


def test_register_allocate_grow_and_free(socket: zmq.Socket) -> None:
    reply = register(socket, "w-ledger", num_blocks=4)
    assert (reply.block_size, reply.kv_blocks_total, reply.num_free_blocks) == (BLOCK_SIZE, 4, 4)

    name, reply = allocate(socket, "w-ledger", "r1", 2)
    assert name == "kernel_reply" and reply.request_id == "r1"
    assert (list(reply.block_ids), reply.num_free_blocks) == ([0, 1], 2)
    name, reply = allocate(socket, "w-ledger", "r1", 1)
    assert (list(reply.block_ids), reply.num_free_blocks) == ([0, 1, 2], 1)

    name, error = allocate(socket, "w-ledger", "r2", 2)
    assert name == "error"
    assert (error.code, error.request_id) == (pb.NOT_ENOUGH_BLOCKS, "r2")

    name, reply = ask(socket, pb.KvFree(worker_id="w-ledger", request_id="r1"), KERNEL_REPLIES)
    assert name == "kernel_reply"
    assert (reply.request_id, list(reply.block_ids), reply.num_free_blocks) == ("r1", [], 4)
    name, reply = ask(socket, pb.KvFree(worker_id="w-ledger", request_id="never"), KERNEL_REPLIES)
    assert (name, reply.request_id, list(reply.block_ids)) == ("kernel_reply", "never", [])


def batch(*changes: pb.KvAllocate | pb.KvFree) -> pb.KvBatch:
    message = pb.KvBatch()
    for change in changes:
        entry = message.changes.add()
        (entry.allocate if isinstance(change, pb.KvAllocate) else entry.free).CopyFrom(change)
    return message


def test_a_batch_is_applied_in_order_each_change_answered_as_if_alone(socket: zmq.Socket) -> None:
    register(socket, "w-batch", num_blocks=4)
    register(socket, "w-batch-2", num_blocks=2)  # one connection may speak for several workers

    name, reply = ask(
        socket,
        batch(
            pb.KvAllocate(worker_id="w-batch", request_id="r1", num_blocks=3),
            pb.KvAllocate(worker_id="w-batch", request_id="r2", num_blocks=2),  # 1 free: refused
            pb.KvAllocate(worker_id="w-batch-2", request_id="r3", num_blocks=2),
            pb.KvFree(worker_id="w-batch", request_id="r1"),
            pb.KvAllocate(worker_id="w-batch", request_id="r2", num_blocks=2),  # fits now
            pb.KvAllocate(worker_id="w-stranger", request_id="r4", num_blocks=1),
        ),
        KERNEL_REPLIES,
    )

    assert name == "kv_batch_reply", reply
    kinds = [result.WhichOneof("result") for result in reply.results]
    assert kinds == ["reply", "error", "reply", "reply", "reply", "error"]
    first, refused, other_worker, freed, granted, stranger = reply.results
    assert (first.reply.request_id, list(first.reply.block_ids), first.reply.num_free_blocks) == (
        "r1",
        [0, 1, 2],
        1,
    )
    assert (refused.error.code, refused.error.request_id) == (pb.NOT_ENOUGH_BLOCKS, "r2")
    assert (other_worker.reply.request_id, other_worker.reply.num_free_blocks) == ("r3", 0)
    assert (freed.reply.request_id, list(freed.reply.block_ids), freed.reply.num_free_blocks) == ("r1", [], 4)
    assert (granted.reply.request_id, len(granted.reply.block_ids)) == ("r2", 2)
    assert (stranger.error.code, stranger.error.request_id) == (pb.UNKNOWN_WORKER, "r4")
    assert view_worker(query_view(socket), "w-batch").kv_blocks_used == 2


def test_unknown_worker_is_told_to_register(socket: zmq.Socket) -> None:
    name, error = allocate(socket, "w-stranger", "r1", 1)
    assert (name, error.code, error.request_id) == ("error", pb.UNKNOWN_WORKER, "r1")
    name, error = ask(socket, pb.KernelHeartbeat(worker_id="w-stranger"), KERNEL_REPLIES)
    assert (name, error.code) == ("error", pb.UNKNOWN_WORKER)


def test_view_shows_heartbeat_and_allocations_and_disconnect_deletes(socket: zmq.Socket) -> None:
    register(socket, "w-view", num_blocks=8)
    allocate(socket, "w-view", "r1", 3)
    # heartbeat and disconnect get no reply: the next answer is the view's
    socket.send(pack(pb.KernelHeartbeat(worker_id="w-view", num_running=2)))
    worker = view_worker(query_view(socket), "w-view")
    assert worker is not None
    assert (
        worker.kv_blocks_total,
        worker.kv_blocks_used,
        worker.num_running,
        worker.num_requests_holding_blocks,
        list(worker.models),
    ) == (8, 3, 2, 1, ["tiny"])

    socket.send(pack(pb.Disconnect(worker_id="w-view", reason="test")))
    assert view_worker(query_view(socket), "w-view") is None


def test_views_are_published(kernel: Kernel, socket: zmq.Socket) -> None:
    with subscriber(kernel.pub_address, RESOURCE_TOPIC) as sub:
        register(socket, "w-pub", num_blocks=2)
        while True:  # views published before this worker registered do not count
            name, view = receive(sub, {"resource_view"})
            if view_worker(view, "w-pub") is not None:
                break
    assert view.block_size == BLOCK_SIZE and view.version > 0


BAD_FRAMES = bad_frames(accepted=pb.ResourceQuery(), refused=pb.Cancel(request_id="r1"))


@pytest.mark.parametrize("frame, code", BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
def test_bad_frames_get_coded_errors_and_the_kernel_keeps_serving(
    socket: zmq.Socket, frame: bytes, code: int
) -> None:
    name, error = ask(socket, frame, KERNEL_REPLIES)
    assert (name, error.code) == ("error", code), error.message
    query_view(socket)


def test_extra_frames_are_malformed(socket: zmq.Socket) -> None:
    socket.send_multipart([b"first", b"second"])
    name, error = receive(socket, KERNEL_REPLIES)
    assert (name, error.code) == ("error", pb.MALFORMED_FRAME)
    query_view(socket)


def test_silent_worker_is_purged_and_sigterm_stops_the_kernel(tmp_path: Path) -> None:
    with start_kernel(tmp_path, FAST_HEARTBEAT_INTERVAL_MS) as kernel:
        with dealer(kernel.address) as socket:
            register(socket, "w-silent", num_blocks=2)
            allocate(socket, "w-silent", "r1", 2)
            wait_until(
                lambda: view_worker(query_view(socket), "w-silent") is None, "the silent worker is purged"
            )
            name, error = ask(socket, pb.KernelHeartbeat(worker_id="w-silent"), KERNEL_REPLIES)
            assert (name, error.code) == ("error", pb.UNKNOWN_WORKER)
        assert kernel.service.stop() == 0, kernel.service.logs()


def test_log_format_json_writes_one_object_per_line(tmp_path: Path) -> None:
    with start_kernel(tmp_path, HEARTBEAT_INTERVAL_MS, "--log-format", "json") as kernel:
        with dealer(kernel.address) as socket:
            socket.send(pack(pb.ResourceQuery()))
            assert socket.poll(10_000)  # serving: its start lines are written
        lines = [json.loads(line) for line in kernel.service.logs().splitlines() if line.startswith("{")]
    serving = next(line for line in lines if "kernel serving on" in line["message"])
    assert (serving["service"], serving["level"], serving["logger"]) == (
        "kernel",
        "INFO",
        "kernel_svc.service",
    )
    assert isinstance(serving["ts"], float)


def test_json_lines_carry_the_context_a_log_call_passes() -> None:
    record = logging.LogRecord("broker", logging.INFO, __file__, 1, "accepted %s", ("r7",), None)
    for name, value in log_fields(request_id="r7", tenant="acme", tier="batch").items():
        setattr(record, name, value)
    line = json.loads(JsonFormatter("broker").format(record))
    assert (line["message"], line["request_id"], line["tenant"], line["tier"]) == (
        "accepted r7",
        "r7",
        "acme",
        "batch",
    )
    assert "worker_id" not in line


def test_llmos_profile_dir_writes_the_loop_profile_when_the_service_stops(
    tmp_path: Path, monkeypatch
) -> None:
    profiles = tmp_path / "profiles"
    monkeypatch.setenv("LLMOS_PROFILE_DIR", str(profiles))  # the service inherits the environment
    with start_kernel(tmp_path, HEARTBEAT_INTERVAL_MS) as kernel:
        with dealer(kernel.address) as socket:
            query_view(socket)
        assert kernel.service.stop() == 0, kernel.service.logs()
    (profile,) = profiles.glob("kernel-*.prof")
    functions = {name for _, _, name in pstats.Stats(str(profile)).stats}
    assert "serve" in functions
