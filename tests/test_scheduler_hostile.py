"""`python -m scheduler_svc` beside a kernel, against peers that misbehave: a worker
flooding the kernel with prefix hashes, batches past every size bound, garbage
policy names, raw bytes that are not ZeroMQ. The scheduler must refuse with coded
errors and keep answering batches."""

from __future__ import annotations

import socket as tcp_socket
from collections.abc import Iterator

import pytest
import test_scheduler_service
import zmq
from service_process import ask, dealer
from test_scheduler_service import (
    BLOCK_SIZE,
    SCHEDULER_REPLIES,
    Services,
    make_schedule_request,
    placements,
    schedule,
)

from llmos.wire import pack, pb

pytestmark = pytest.mark.e2e

KERNEL_REPLIES = {"kernel_reply", "resource_view", "error"}
services = test_scheduler_service.services  # the fixture: a kernel and a scheduler beside it


@pytest.fixture
def socket(services: Services) -> Iterator[zmq.Socket]:
    with dealer(services.scheduler_address) as socket:
        yield socket


def a_batch_is_answered(socket: zmq.Socket, batch_id: int) -> None:
    decision = schedule(socket, make_schedule_request(batch_id, [("r1", 0, 1)], [("w-any", 0, 1)]))
    assert placements(decision) == [("r1", "w-any")]


def expect_error(socket: zmq.Socket, message: object, code: int) -> pb.Error:
    name, error = ask(socket, message, SCHEDULER_REPLIES | {"policy_status"})  # type: ignore[arg-type]
    assert (name, error.code) == ("error", code), error
    return error


def test_a_million_prefix_hashes_are_refused_and_the_scheduler_still_answers(
    services: Services, socket: zmq.Socket
) -> None:
    with dealer(services.kernel_address) as worker:
        name, _ = ask(
            worker,
            pb.KernelRegister(worker_id="w-flood", models=["tiny"], kv_capacity_tokens=64 * BLOCK_SIZE),
            KERNEL_REPLIES,
        )
        assert name == "kernel_reply"
        name, error = ask(
            worker, pb.KvPrefixReport(worker_id="w-flood", block_hashes=range(1_000_000)), KERNEL_REPLIES
        )
        assert (name, error.code) == ("error", pb.INVALID_ARGUMENT)
        worker.send(pack(pb.KvPrefixReport(worker_id="w-flood", block_hashes=range(1000))))  # cut to 64
        name, view = ask(worker, pb.ResourceQuery(), KERNEL_REPLIES)
        assert [len(w.cached_prefix_hashes) for w in view.workers if w.worker_id == "w-flood"] == [64]
        a_batch_is_answered(socket, 1)


def test_a_batch_past_its_bounds_is_refused_invalid_argument(socket: zmq.Socket) -> None:
    too_many_workers = make_schedule_request(2, [("r1", 0, 1)], [(f"w{i}", 0, 1) for i in range(4097)])
    expect_error(socket, too_many_workers, pb.INVALID_ARGUMENT)
    too_many_pending = make_schedule_request(3, [(f"r{i}", 0, i) for i in range(65_537)], [("w", 0, 1)])
    expect_error(socket, too_many_pending, pb.INVALID_ARGUMENT)
    a_batch_is_answered(socket, 4)


def test_a_request_with_a_million_prefix_hashes_is_placed(socket: zmq.Socket) -> None:
    request = make_schedule_request(5, [("r-long", 0, 1)], [("w-any", 0, 1)])
    request.pending[0].prefix_hashes.extend(range(1_000_000))
    assert placements(schedule(socket, request)) == [("r-long", "w-any")]


@pytest.mark.parametrize("name", ["x" * 1_000_000, "fcfs\x00", "\u202e" * 10])
def test_garbage_policy_names_are_refused_invalid_argument(socket: zmq.Socket, name: str) -> None:
    error = expect_error(socket, pb.SetPolicy(policy=name), pb.INVALID_ARGUMENT)
    assert len(error.message) < 1000  # the name is not echoed back


def test_raw_bytes_that_are_not_zmtp_leave_the_scheduler_serving(
    services: Services, socket: zmq.Socket
) -> None:
    host, port = services.scheduler_address.removeprefix("tcp://").rsplit(":", 1)
    for garbage in (b"GET / HTTP/1.1\r\n\r\n", b"\xff" + b"\x00" * 8 + b"\x7f" + b"\xa5" * 65536):
        with tcp_socket.create_connection((host, int(port)), timeout=5) as raw:
            raw.sendall(garbage)
    a_batch_is_answered(socket, 6)
