"""Socket construction with deliberate options: a finite LINGER, high-water
marks and a frame size limit on every socket, ROUTER_MANDATORY on every ROUTER."""

from __future__ import annotations

import logging
from typing import Protocol, TypeVar

import zmq
from zmq.utils.monitor import parse_monitor_message

from llmos.wire.constants import (
    CLIENT_HEARTBEAT_INTERVAL_MS,
    CLIENT_HEARTBEAT_TIMEOUT_MS,
    CLIENT_RECONNECT_MAX_MS,
    CLIENT_RECONNECT_MS,
    MAX_FRAME_BYTES,
    SOCKET_HWM,
    SOCKET_LINGER_MS,
)

log = logging.getLogger(__name__)

# Plain ints: pyzmq's flag enums cost an enum operation per frame (send_multipart ORs
# SNDMORE into every frame's flags), measurable where the broker sends per token.
_SEND_MORE_NOW = int(zmq.SNDMORE | zmq.NOBLOCK)
_SEND_LAST_NOW = int(zmq.NOBLOCK)

# The socket class of the context: a zmq.asyncio.Context makes sockets whose sends are awaited.
SocketT = TypeVar("SocketT", bound=zmq.Socket)


class CurveOptions(Protocol):
    """CURVE settings for one socket (llmos.security.curve: CurveServer, CurveClient);
    applied before bind or connect, as libzmq requires. None everywhere = plain TCP."""

    def apply(self, socket: zmq.Socket) -> None: ...


def _apply_common(socket: zmq.Socket, curve: CurveOptions | None = None) -> None:
    if curve is not None:
        curve.apply(socket)
    socket.setsockopt(zmq.LINGER, SOCKET_LINGER_MS)
    socket.setsockopt(zmq.SNDHWM, SOCKET_HWM)
    socket.setsockopt(zmq.RCVHWM, SOCKET_HWM)
    socket.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)


def bind_router(context: zmq.Context[SocketT], address: str, curve: CurveOptions | None = None) -> SocketT:
    """A ROUTER that raises on a send to a vanished peer instead of dropping it."""
    socket = context.socket(zmq.ROUTER)
    _apply_common(socket, curve)
    socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
    socket.bind(address)
    return socket


def connect_dealer(
    context: zmq.Context[SocketT],
    address: str,
    identity: str | None = None,
    is_immediate: bool = False,
    curve: CurveOptions | None = None,
) -> SocketT:
    """A DEALER; with `is_immediate`, a send fails at once (EAGAIN) while no peer is
    connected instead of queueing for one (IMMEDIATE must be set before connect)."""
    socket = context.socket(zmq.DEALER)
    _apply_common(socket, curve)
    if identity:
        socket.setsockopt(zmq.IDENTITY, identity.encode())
    if is_immediate:
        socket.setsockopt(zmq.IMMEDIATE, 1)
    socket.connect(address)
    return socket


# What a client's connection monitor reports: the connection to the broker ended
# (closed, or silent past the heartbeat timeout), or a new one is ready.
CLIENT_LINK_EVENTS = zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED


def connect_client_dealer(
    context: zmq.Context[SocketT], address: str, curve: CurveOptions | None = None
) -> tuple[SocketT, SocketT]:
    """A client's DEALER to the broker and the PAIR socket that monitors its connection
    (CLIENT_LINK_EVENTS; `link_event` reads one).

    ZMTP heartbeats end the connection to a broker that stops answering PINGs, as a
    closed connection ends by itself; either way the monitor says EVENT_DISCONNECTED.
    While the broker is away ZeroMQ retries the connect, the interval doubling from
    CLIENT_RECONNECT_MS up to CLIENT_RECONNECT_MAX_MS. The socket is not IMMEDIATE:
    what is sent before the first connection waits for it (a client renews the socket
    after a lost connection, so nothing waits on a dead one)."""
    socket = context.socket(zmq.DEALER)
    _apply_common(socket, curve)
    socket.setsockopt(zmq.HEARTBEAT_IVL, CLIENT_HEARTBEAT_INTERVAL_MS)
    socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, CLIENT_HEARTBEAT_TIMEOUT_MS)
    socket.setsockopt(zmq.HEARTBEAT_TTL, CLIENT_HEARTBEAT_TIMEOUT_MS)  # the broker may drop us as silent
    socket.setsockopt(zmq.RECONNECT_IVL, CLIENT_RECONNECT_MS)
    socket.setsockopt(zmq.RECONNECT_IVL_MAX, CLIENT_RECONNECT_MAX_MS)
    monitor = socket.get_monitor_socket(CLIENT_LINK_EVENTS)
    socket.connect(address)
    return socket, monitor


def link_event(frames: list[bytes]) -> int:
    """The event (zmq.EVENT_*) of one message from a monitor socket."""
    return int(parse_monitor_message(frames)["event"])


def close_monitored(socket: zmq.Socket, monitor: zmq.Socket, linger_ms: int = SOCKET_LINGER_MS) -> None:
    """Close a socket from `connect_client_dealer` and its monitor."""
    socket.disable_monitor()
    monitor.close(linger=0)
    socket.close(linger=linger_ms)


def bind_pub(context: zmq.Context[SocketT], address: str) -> SocketT:
    socket = context.socket(zmq.PUB)
    _apply_common(socket)
    socket.bind(address)
    return socket


def connect_sub(
    context: zmq.Context[SocketT], address: str, topic: bytes, curve: CurveOptions | None = None
) -> SocketT:
    socket = context.socket(zmq.SUB)
    _apply_common(socket, curve)
    socket.setsockopt(zmq.SUBSCRIBE, topic)
    socket.connect(address)
    return socket


def router_frames(frames: list[bytes]) -> tuple[bytes, bytes, bool] | None:
    """Split a ROUTER message into (identity, payload, has_delimiter).

    DEALER peers send [identity, payload]; REQ peers send [identity, b"", payload].
    Anything else is malformed; None tells the caller to answer MALFORMED_FRAME.
    """
    if len(frames) == 2:
        return frames[0], frames[1], False
    if len(frames) == 3 and frames[1] == b"":
        return frames[0], frames[2], True
    return None


def send_reply(router: zmq.Socket, identity: bytes, has_delimiter: bool, payload: bytes) -> bool:
    """Answer a ROUTER peer in the layout it spoke; False if it cannot be reached.

    With ROUTER_MANDATORY a vanished peer raises EHOSTUNREACH, and a peer that
    stopped reading raises EAGAIN at its high-water mark; both mean "gone".
    """
    try:
        # frame by frame: a multipart message is queued whole once its first frame is
        # (a refused first frame raises before anything is queued)
        router.send(identity, _SEND_MORE_NOW)
        if has_delimiter:
            router.send(b"", _SEND_MORE_NOW)
        router.send(payload, _SEND_LAST_NOW)
        return True
    except zmq.ZMQError as exc:
        log.warning("reply to peer %r dropped: %s", identity, exc)
        return False
