"""The kernel's resource feed: an XPUB that subscribers cannot make hold memory.

A plain PUB applies every subscription a SUB sends to its subscription trie, so a
peer sending large, distinct subscriptions grows the kernel without bound. This
socket is an XPUB with XPUB_MANUAL: libzmq hands each (un)subscription to the
kernel, which applies only the topics it publishes (the resource topic, and the
empty prefix that matches everything) and refuses the rest. MAXMSGSIZE cuts off a
peer whose subscription frame is longer than any real one, and a small RCVHWM
bounds what waits to be read.

libzmq 4.3 still records every subscription of a manual XPUB per connection (to
unsubscribe when the connection ends), and an XPUB cannot say which connection
sent a frame. So after MAX_REFUSED_PER_BIND refused subscriptions the publisher
unbinds and binds again: every connection ends and what they made libzmq hold
is freed. Subscribers reconnect by themselves within ZeroMQ's reconnect interval
(100 ms) and subscribe again, so an honest one misses a view at most. An
ordinary SUB (`llmos.wire.sockets.connect_sub`) needs nothing different.
"""

from __future__ import annotations

import logging
import time

import zmq

from llmos.wire.constants import RESOURCE_TOPIC, SOCKET_HWM, SOCKET_LINGER_MS
from llmos.wire.peer_errors import PeerErrors
from llmos.wire.sockets import CurveOptions

log = logging.getLogger(__name__)

PUBLISHED_TOPICS = frozenset({RESOURCE_TOPIC, b""})
# a subscription frame: b"\x01" + topic, or (ZMTP 3.1) a SUBSCRIBE command of 10 bytes + topic
MAX_SUBSCRIPTION_BYTES = 32
# Refused subscriptions before every connection is dropped. Whenever the kernel reads,
# libzmq moves all a connection has queued (up to SUBSCRIPTION_HWM frames) into its
# record, so before the drop a flooding connection has it hold at most about
# MAX_REFUSED_PER_BIND * SUBSCRIPTION_HWM frames of MAX_SUBSCRIPTION_BYTES (a few MB);
# an honest subscriber sends one or two.
MAX_REFUSED_PER_BIND = 128
SUBSCRIPTION_HWM = 100  # (un)subscriptions queued per subscriber before libzmq stops reading it
# (Un)subscriptions handled per call, so a flood cannot starve the kernel's other work.
MAX_SUBSCRIPTIONS_PER_POLL = 10_000
# While the old listener closes, binding again fails; it is tried at most this often,
# not at every turn of the kernel's loop, which may come at once after another
REBIND_INTERVAL_S = 0.02
_SUBSCRIBE, _UNSUBSCRIBE = 1, 0


def bind_resource_pub(context: zmq.Context, address: str, curve: CurveOptions | None = None) -> zmq.Socket:
    socket = context.socket(zmq.XPUB)
    if curve is not None:
        curve.apply(socket)  # kept across the rebinds below
    socket.setsockopt(zmq.LINGER, SOCKET_LINGER_MS)
    socket.setsockopt(zmq.SNDHWM, SOCKET_HWM)
    socket.setsockopt(zmq.RCVHWM, SUBSCRIPTION_HWM)
    socket.setsockopt(zmq.MAXMSGSIZE, MAX_SUBSCRIPTION_BYTES)
    socket.setsockopt(zmq.XPUB_MANUAL, 1)
    socket.bind(address)
    return socket


class ResourcePublisher:
    """Owns the kernel's XPUB: `apply_subscriptions` when it polls readable, `publish`."""

    def __init__(
        self, context: zmq.Context, address: str, peer_errors: PeerErrors, curve: CurveOptions | None = None
    ) -> None:
        self.socket = bind_resource_pub(context, address, curve)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)  # the port a `*` bind chose
        self.peer_errors = peer_errors
        self.num_refused_since_bind = 0
        self.is_bound = True
        self.next_bind_at_s = 0.0  # while unbound: when to try binding again

    def apply_subscriptions(self) -> None:
        """Apply each waiting subscription to a published topic; refuse the others. The
        subscribers are dropped as soon as the refusals reach the bound, not after the
        call's last frame: every read lets libzmq take in more of a flood (a manual XPUB
        moves all a connection has queued into its record whenever it reads), so many reads
        before the check, on a slow turn, would let a whole flood in. While unbound, what
        the dropped connections left is read and discarded (so the socket does not poll
        readable turn after turn) and the bind is tried again."""
        if not self.is_bound:
            self.discard_waiting()
            self.drop_subscribers()
            return
        for _ in range(MAX_SUBSCRIPTIONS_PER_POLL):
            if self.num_refused_since_bind >= MAX_REFUSED_PER_BIND:
                break
            try:
                frame = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            self.apply(frame)
        if self.num_refused_since_bind >= MAX_REFUSED_PER_BIND:
            self.drop_subscribers()

    def discard_waiting(self) -> None:
        for _ in range(MAX_SUBSCRIPTIONS_PER_POLL):
            try:
                self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return

    def drop_subscribers(self) -> None:
        """End every subscriber's connection (see the module doc); a bind that fails
        (the old listener is still closing) is tried again, at most every
        REBIND_INTERVAL_S, at later calls."""
        now_s = time.monotonic()
        if self.is_bound:
            log.warning(
                "%d refused subscriptions: dropping every subscriber's connection",
                self.num_refused_since_bind,
            )
            self.socket.unbind(self.endpoint)
            self.is_bound = False
        elif now_s < self.next_bind_at_s:
            return
        try:
            self.socket.bind(self.endpoint)
        except zmq.ZMQError as exc:
            if self.next_bind_at_s == 0.0:  # said once a drop, not at every retry
                log.info("binding %s again failed (%s); retrying", self.endpoint, exc)
            self.next_bind_at_s = now_s + REBIND_INTERVAL_S
            return
        self.is_bound, self.num_refused_since_bind, self.next_bind_at_s = True, 0, 0.0

    def apply(self, frame: bytes) -> None:
        # XPUB_MANUAL: the option set now applies to the subscriber this frame came from
        kind, topic = (frame[0], frame[1:]) if frame else (None, b"")
        if kind not in (_SUBSCRIBE, _UNSUBSCRIBE):
            self.num_refused_since_bind += 1
            self.peer_errors.refused("malformed subscription", "a subscriber", f"{len(frame)} bytes")
            return
        if topic not in PUBLISHED_TOPICS:
            self.num_refused_since_bind += 1
            self.peer_errors.refused("unknown topic", "a subscriber", repr(topic[:32]))
            return
        self.socket.setsockopt(zmq.SUBSCRIBE if kind == _SUBSCRIBE else zmq.UNSUBSCRIBE, topic)

    def publish(self, payload: bytes) -> None:
        # an XPUB drops for a subscriber past its SNDHWM: a slow reader loses views, never blocks us
        self.socket.send_multipart([RESOURCE_TOPIC, payload], zmq.NOBLOCK)

    def close(self) -> None:
        self.socket.close()
