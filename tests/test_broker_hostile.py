"""A real broker (`llmos broker`, with a kernel and one simulated worker) against
peers that lie or speak garbage: it refuses them with coded errors, counts them in
`num_refused_messages`, holds no state for them, and keeps serving honest clients."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest
import zmq
from service_process import dealer, receive, wait_until
from stack import Stack

from llmos.client import Client
from llmos.errors import LlmosError
from llmos.wire import pack, pb

pytestmark = pytest.mark.e2e

SIM_MODEL = "simulated"
SIM_WORKER = "sim"
MODEL_GRACE_S = 1.0
ONE_MIB = 1024 * 1024


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    log_dir = tmp_path_factory.mktemp("hostile")
    stack = Stack(
        model_dir=log_dir,
        log_dir=log_dir,
        num_workers=0,
        with_scheduler=False,
        broker_args=("--model-grace-s", str(MODEL_GRACE_S)),
    )
    with stack:
        stack.start_sim_worker(SIM_MODEL, SIM_WORKER)
        yield stack
        stack.check_alive()  # the broker outlived every test


def num_refused(stack: Stack) -> int:
    return stack.status().num_refused_messages


def answer_tokens(stack: Stack, **fields) -> tuple[int, pb.FinishReason, str]:
    """Submit an honest request; (tokens made, finish reason, model) of its answer."""
    with Client(stack.broker_address, timeout_s=30) as client:
        result = client.result(client.submit("an honest prompt", max_tokens=8, **fields))
    return result.usage.generated_tokens, result.finish_reason, result.model


def refusal(stack: Stack, prompt: str = "hi", **fields) -> int:
    with Client(stack.broker_address, timeout_s=30) as client, pytest.raises(LlmosError) as refused:
        client.submit(prompt, max_tokens=4, **fields)
    return refused.value.code


def send_raw(address: str, data: bytes) -> None:
    """Open a TCP connection to a zmq address, write `data`, and hang up."""
    url = urlparse(address)
    with socket.create_connection((url.hostname, url.port), timeout=10) as raw:
        raw.sendall(data)
        time.sleep(0.2)  # let the broker read it before the hang-up


def register_phantom(
    worker_socket: zmq.Socket, worker_id: str, models: list[str], **fields
) -> tuple[str, pb.Error | None]:
    """Send a WorkerRegister; ("error", the Error) if refused, ("quiet", None) if not."""
    fields.setdefault("max_num_seqs", 1)
    fields.setdefault("heartbeat_interval_ms", 60_000)
    worker_socket.send(pack(pb.WorkerRegister(worker_id=worker_id, models=models, **fields)))
    if not worker_socket.poll(1000):
        return "quiet", None
    name, message = receive(worker_socket, {"error", "heartbeat", "dispatch"})
    return (name, message) if name == "error" else ("quiet", None)


def next_message(worker_socket: zmq.Socket, names: set[str]) -> tuple[str, object]:
    """The broker's next message to a worker, heartbeats passed over."""
    while True:
        name, message = receive(worker_socket, names | {"heartbeat"})
        if name != "heartbeat":
            return name, message


def status_workers(stack: Stack) -> list[str]:
    return sorted(w.worker_id for w in stack.status().workers)


# ZMTP 2.0: the greeting (signature, revision 1, socket type DEALER, empty identity), a frame
ZMTP2 = bytes([0xFF, 0, 0, 0, 0, 0, 0, 0, 1, 0x7F, 0x01, 0x05]) + b"\x00\x00" + b"\x00\x05hello"
# ZMTP 1.0: an empty identity frame, then a message frame (length, flags, body)
ZMTP1 = b"\x01\x00" + b"\x06\x00hello"
HTTP = b"GET / HTTP/1.1\r\nHost: broker\r\n\r\n"
NOISE = random.Random(15).randbytes(512)  # the same noise every run, so the counts are exact


def test_bytes_that_are_not_zmtp3_do_not_take_the_broker_down(stack):
    before = num_refused(stack)
    for address in (stack.broker_address, stack.ports.worker_address):
        for data in (NOISE, HTTP, ZMTP2, ZMTP1):
            send_raw(address, data)
    assert answer_tokens(stack) == (8, pb.FINISH_REASON_LENGTH, SIM_MODEL)
    # per port: the noise reads as two ZMTP 1.0 messages, the ZMTP 2.0 and 1.0 peers send
    # one each, the HTTP request fails the handshake unread; each message is refused (on
    # the client port before it is parsed: such a connection cannot be watched)
    assert num_refused(stack) - before == 2 * (2 + 1 + 1)
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "llmos",
            "status",
            "--broker-address",
            stack.broker_address,
            "--kernel-address",
            stack.kernel_address,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert f"refused messages {num_refused(stack)}" in shown


@pytest.mark.parametrize(
    ("models", "fields", "why"),
    [
        ([], {}, "the number of models is 0"),
        (["bad\x00model"], {}, "not printable"),
        (["m"], {"max_num_seqs": 100_000}, "max_num_seqs"),
        (["m"], {"max_model_len": 2**25}, "max_model_len"),
        (["m"], {"heartbeat_interval_ms": 10**9}, "heartbeat_interval_ms"),
    ],
)
def test_a_registration_with_bad_fields_is_refused(stack, models, fields, why):
    with dealer(stack.ports.worker_address, "phantom") as phantom:
        name, error = register_phantom(phantom, "phantom", models, **fields)
    assert name == "error" and error.code == pb.INVALID_ARGUMENT and why in error.message
    assert status_workers(stack) == [SIM_WORKER]


def test_a_worker_cannot_register_under_another_workers_id(stack):
    with dealer(stack.ports.worker_address, "phantom") as phantom:
        name, error = register_phantom(phantom, SIM_WORKER, ["zz-phantom"])
    assert name == "error" and error.code == pb.INVALID_ARGUMENT and "identity" in error.message
    assert status_workers(stack) == [SIM_WORKER]
    assert answer_tokens(stack) == (8, pb.FINISH_REASON_LENGTH, SIM_MODEL)


def forged_progress(request_ids: list[str]) -> pb.StepProgress:
    deltas = [
        pb.RequestDelta(
            request_id=request_id,
            token_ids=[666],
            text=" forged",
            is_finished=True,
            finish_reason=pb.FINISH_REASON_STOP,
        )
        for request_id in request_ids
    ]
    return pb.StepProgress(worker_id="liar", deltas=deltas)


def test_progress_for_requests_never_dispatched_is_ignored(stack):
    """A registered worker reports on every request id the broker may have given out;
    a real request running on the simulated worker meanwhile completes untouched."""
    forged_ids = [f"r{i}" for i in range(1, 501)]  # the broker's own ids: r<arrival>
    with dealer(stack.ports.worker_address, "liar") as liar, Client(stack.broker_address) as client:
        assert register_phantom(liar, "liar", ["zz-liar"]) == ("quiet", None)
        request_id = client.submit("a long honest answer", model=SIM_MODEL, max_tokens=64)
        before = num_refused(stack)
        liar.send(pack(forged_progress(forged_ids)))
        # and the same from a connection that never registered: told to register again
        with dealer(stack.ports.worker_address, "stranger") as stranger:
            stranger.send(pack(forged_progress(forged_ids[:10])))
            name, message = next_message(stranger, {"disconnect"})
        result = client.result(request_id)
        refused = num_refused(stack) - before
        liar.send(pack(pb.Disconnect(worker_id="liar", reason="test over")))
    assert name == "disconnect" and "register" in message.reason
    assert (result.usage.generated_tokens, result.finish_reason) == (64, pb.FINISH_REASON_LENGTH)
    assert 666 not in result.token_ids and result.worker_id == SIM_WORKER
    assert refused == len(forged_ids) + 1  # each forged delta, and the stranger's message
    wait_until(lambda: status_workers(stack) == [SIM_WORKER], "the liar is gone")


def test_a_stranger_is_told_to_register_once_per_interval_not_once_per_message(stack):
    """What a restarted broker sees: a worker's heartbeats and progress arrive before
    its registration. One "register again" for the burst, so the worker registers once."""
    with dealer(stack.ports.worker_address, "restarted") as stranger:
        for _ in range(50):
            stranger.send(pack(pb.Heartbeat(worker_id="restarted")))
        num_told = 0
        while stranger.poll(500):
            name, _ = receive(stranger, {"disconnect", "heartbeat"})
            num_told += name == "disconnect"
    assert 1 <= num_told <= 2, f"told to register {num_told} times for one burst"


def test_a_refused_message_with_a_request_id_is_answered_with_that_id(stack):
    """So a client with several requests in flight can tell which one an Error answers."""
    wrong_version = pb.Envelope(version=7, generate=pb.GenerateRequest(request_id="mine-1", prompt="hi"))
    not_for_clients = pb.Envelope(version=1, dispatch=pb.Dispatch(request_id="mine-2"))
    with dealer(stack.broker_address, "careful") as client:
        answers = []
        for envelope in (wrong_version, not_for_clients):
            client.send(envelope.SerializeToString())
            answers.append(receive(client, {"error"})[1])
    assert [(a.code, a.request_id) for a in answers] == [
        (pb.UNSUPPORTED_VERSION, "mine-1"),
        (pb.UNKNOWN_MESSAGE, "mine-2"),
    ]


def test_a_phantoms_model_is_forgotten_after_its_grace(stack):
    """A phantom claims a model that sorts first, so it becomes the default; it goes
    silent, and once the grace has passed the request queued for it is refused and a
    request naming no model is served by the real one."""
    with dealer(stack.ports.worker_address, "ghost") as ghost:
        assert register_phantom(ghost, "ghost", ["aaa-garbage"], heartbeat_interval_ms=100) == ("quiet", None)
        with Client(stack.broker_address, timeout_s=30) as client:
            stuck_id = client.submit("who serves me?", max_tokens=4)  # the default: aaa-garbage
            with pytest.raises(LlmosError) as refused:
                client.result(stuck_id)  # the ghost took it and went silent
    assert refused.value.code == pb.UNKNOWN_MODEL and "aaa-garbage" in refused.value.message
    assert refusal(stack, model="aaa-garbage") == pb.UNKNOWN_MODEL
    assert answer_tokens(stack) == (8, pb.FINISH_REASON_LENGTH, SIM_MODEL)
    assert status_workers(stack) == [SIM_WORKER]


def vm_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def test_tenant_names_are_bounded_and_leave_no_trace(stack):
    broker_pid = stack.processes["broker"].pid
    rss_before = vm_rss_bytes(broker_pid)
    for i in range(50):
        assert refusal(stack, tenant=f"{i}-" + "t" * ONE_MIB) == pb.INVALID_ARGUMENT
    assert refusal(stack, tenant="t" * 65) == pb.INVALID_ARGUMENT
    tenants = [f"{i:04d}-" + "t" * 59 for i in range(500)]  # 64 bytes: the longest taken
    with Client(stack.broker_address, timeout_s=60) as client:
        ids = [client.submit("x", model=SIM_MODEL, max_tokens=1, tenant=tenant) for tenant in tenants]
        results = [client.result(request_id) for request_id in ids]
        status = client.status()
    assert [r.usage.generated_tokens for r in results] == [1] * 500
    # far below the 50 MiB of refused names, let alone the state of 500 tenants kept
    assert vm_rss_bytes(broker_pid) - rss_before < 32 * ONE_MIB
    assert b"0001-ttt" not in status.SerializeToString()
    assert status.num_running == 0 and all(tier.depth == 0 for tier in status.tiers)


def test_an_oversize_prompt_is_refused_before_any_worker_sees_it(stack):
    """A worker that registered max_model_len=16: a prompt of more than 16 x 8 bytes is
    refused TOO_LARGE at admission; one of 128 bytes reaches the worker."""
    with dealer(stack.ports.worker_address, "short") as short:
        assert register_phantom(short, "short", ["short-ctx"], max_model_len=16) == ("quiet", None)
        assert refusal(stack, "x" * 129, model="short-ctx") == pb.TOO_LARGE
        assert refusal(stack, "é" * 65, model="short-ctx") == pb.TOO_LARGE  # 130 bytes
        assert refusal(stack, "x" * (ONE_MIB + 1), model=SIM_MODEL) == pb.TOO_LARGE  # max_prompt_bytes
        with Client(stack.broker_address) as client:
            client.submit("y" * 128, model="short-ctx", max_tokens=1)
            name, dispatch = next_message(short, {"dispatch"})
        short.send(pack(pb.Disconnect(worker_id="short", reason="test over")))
    assert name == "dispatch" and dispatch.prompt == "y" * 128  # the first and only one it got
