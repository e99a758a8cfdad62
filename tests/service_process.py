"""Start one llmos service the way a user does (`python -m <package> --flags`)
on free ports, talk to it over a DEALER, and always stop it.

    with running_service("kernel_svc", "--kernel-bind", address, log_dir=tmp_path) as kernel:
        with dealer(address) as socket:
            name, reply = ask(socket, pb.ResourceQuery(), {"resource_view"})
"""

from __future__ import annotations

import contextlib
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import zmq
from google.protobuf.message import Message

from llmos.launcher import BROKER_PORT_STRIDE, METRICS_PORT_OFFSET
from llmos.wire import pack, pb, unpack
from llmos.wire.constants import PROTOCOL_VERSION
from llmos.wire.envelope import body_name
from llmos.wire.sockets import connect_dealer, connect_sub

REPO_ROOT = Path(__file__).resolve().parents[1]
# generous: on a loaded two-core machine a fresh Python process can take seconds
REPLY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


DEFAULT_EPHEMERAL_START = 32768  # Linux's default: ports from here go to outgoing connections


def free_up_base_port(num_workers: int, num_brokers: int = 1) -> int:
    """A base port for `llmos up` whose every port, /metrics too, is free now, and
    below the ports the OS hands to outgoing connections, which would take one at random."""
    # P to P+4 for the services, then /metrics from P+METRICS_PORT_OFFSET: the kernel,
    # the scheduler, the broker, one port per worker, two per further broker; those
    # brokers' own ports from P + BROKER_PORT_STRIDE * i
    if num_brokers > 1:
        num_ports = BROKER_PORT_STRIDE * (num_brokers - 1) + 5
    else:
        num_ports = METRICS_PORT_OFFSET + 3 + num_workers
    try:
        ephemeral_start = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_start = DEFAULT_EPHEMERAL_START
    for base in random.sample(range(20_000, ephemeral_start - num_ports, num_ports), 50):
        try:
            with contextlib.ExitStack() as ports:
                for port in range(base, base + num_ports):
                    ports.enter_context(socket.socket()).bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free port range")


class ServiceProcess:
    def __init__(self, package: str, args: tuple[str, ...], log_path: Path) -> None:
        self.log_path = log_path
        with open(log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", package, *args],
                cwd=REPO_ROOT,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it does not exit; return its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@contextmanager
def running_service(package: str, *args: str, log_dir: Path) -> Iterator[ServiceProcess]:
    service = ServiceProcess(package, args, log_dir / f"{package}.log")
    try:
        yield service
    finally:
        service.stop()


@contextmanager
def dealer(address: str, identity: str | None = None) -> Iterator[zmq.Socket]:
    """A DEALER to `address`; `identity` as a worker's (the broker addresses a worker
    by its id as the socket identity)."""
    context = zmq.Context()
    socket = connect_dealer(context, address, identity)
    try:
        yield socket
    finally:
        socket.close(linger=0)
        context.term()


@contextmanager
def subscriber(address: str, topic: bytes) -> Iterator[zmq.Socket]:
    context = zmq.Context()
    socket = connect_sub(context, address, topic)
    try:
        yield socket
    finally:
        socket.close(linger=0)
        context.term()


def receive(socket: zmq.Socket, accepted: set[str]) -> tuple[str, Message]:
    """The next message on `socket`, unpacked; fails the test after REPLY_TIMEOUT_S."""
    assert socket.poll(int(REPLY_TIMEOUT_S * 1000), zmq.POLLIN), "no message from the service"
    return unpack(socket.recv_multipart()[-1], frozenset(accepted))


def ask(socket: zmq.Socket, request: Message | bytes, accepted: set[str]) -> tuple[str, Message]:
    """Send one message (or raw bytes) and return the unpacked reply."""
    socket.send(request if isinstance(request, bytes) else pack(request))
    return receive(socket, accepted)


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = REPLY_TIMEOUT_S) -> None:
    deadline_s = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline_s, f"timed out waiting until {what}"
        time.sleep(0.05)


def bad_frames(accepted: Message, refused: Message) -> dict[str, tuple[bytes, int]]:
    """{case: (frame, the error code it must get)} for a service that accepts
    messages like `accepted` and refuses ones like `refused`."""

    def envelope(version: int, body: Message) -> pb.Envelope:
        envelope = pb.Envelope(version=version)
        getattr(envelope, body_name(body)).CopyFrom(body)
        return envelope

    return {
        "garbage": (b"not an envelope", pb.MALFORMED_FRAME),
        "wrong version": (
            envelope(PROTOCOL_VERSION + 1, accepted).SerializeToString(),
            pb.UNSUPPORTED_VERSION,
        ),
        # field 96, length-delimited, empty: a message from a newer protocol
        "unknown oneof": (
            pb.Envelope(version=PROTOCOL_VERSION).SerializeToString() + b"\x82\x06\x00",
            pb.UNKNOWN_MESSAGE,
        ),
        "not for this service": (pack(refused), pb.UNKNOWN_MESSAGE),
    }
