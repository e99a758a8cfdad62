"""The kernel's resource feed: an XPUB that subscribers cannot make hold memory.

A plain PUB applies every subscription a SUB sends to its subscription trie, so a
peer sending large, distinct subscriptions grows the kernel without bound. This
socket is an XPUB with XPUB_MANUAL: libzmq hands each (un)subscription to the
kernel and applies none by itself; the kernel applies only the topics it publishes
(the resource topic, and the empty prefix that matches everything) and drops the
rest. MAXMSGSIZE cuts off a peer whose subscription frame is larger than any real
topic, and a small RCVHWM bounds what waits to be read. An ordinary SUB
(`llmos.wire.sockets.connect_sub`) needs nothing different.
"""

from __future__ import annotations

import logging

import zmq

from llmos.wire.constants import RESOURCE_TOPIC, SOCKET_HWM, SOCKET_LINGER_MS
from llmos.wire.peer_errors import PeerErrors

log = logging.getLogger(__name__)

PUBLISHED_TOPICS = frozenset({RESOURCE_TOPIC, b""})
MAX_SUBSCRIPTION_BYTES = 256  # b"\x01" + topic: far above b"resources"
SUBSCRIPTION_HWM = 1000  # (un)subscriptions queued per subscriber before libzmq stops reading it
# (Un)subscriptions handled per call, so a flood cannot starve the kernel's other work.
MAX_SUBSCRIPTIONS_PER_POLL = 10_000
_SUBSCRIBE, _UNSUBSCRIBE = 1, 0


def bind_resource_pub(context: zmq.Context, address: str) -> zmq.Socket:
    socket = context.socket(zmq.XPUB)
    socket.setsockopt(zmq.LINGER, SOCKET_LINGER_MS)
    socket.setsockopt(zmq.SNDHWM, SOCKET_HWM)
    socket.setsockopt(zmq.RCVHWM, SUBSCRIPTION_HWM)
    socket.setsockopt(zmq.MAXMSGSIZE, MAX_SUBSCRIPTION_BYTES)
    socket.setsockopt(zmq.XPUB_MANUAL, 1)
    socket.bind(address)
    return socket


class ResourcePublisher:
    """Owns the kernel's XPUB: `apply_subscriptions` when it polls readable, `publish`."""

    def __init__(self, context: zmq.Context, address: str, peer_errors: PeerErrors) -> None:
        self.socket = bind_resource_pub(context, address)
        self.peer_errors = peer_errors

    def apply_subscriptions(self) -> None:
        """Apply each waiting subscription to a published topic; refuse the others."""
        for _ in range(MAX_SUBSCRIPTIONS_PER_POLL):
            try:
                frame = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.apply(frame)

    def apply(self, frame: bytes) -> None:
        # XPUB_MANUAL: the option set now applies to the subscriber this frame came from
        kind, topic = (frame[0], frame[1:]) if frame else (None, b"")
        if kind not in (_SUBSCRIBE, _UNSUBSCRIBE):
            self.peer_errors.refused("malformed subscription", "a subscriber", f"{len(frame)} bytes")
            return
        if topic not in PUBLISHED_TOPICS:
            self.peer_errors.refused("unknown topic", "a subscriber", repr(topic[:32]))
            return
        self.socket.setsockopt(zmq.SUBSCRIBE if kind == _SUBSCRIBE else zmq.UNSUBSCRIBE, topic)

    def publish(self, payload: bytes) -> None:
        # an XPUB drops for a subscriber past its SNDHWM: a slow reader loses views, never blocks us
        self.socket.send_multipart([RESOURCE_TOPIC, payload], zmq.NOBLOCK)

    def close(self) -> None:
        self.socket.close()
