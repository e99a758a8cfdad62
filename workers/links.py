"""The worker's two DEALER sockets and their liveness (mechanism only).

Broker: identity = worker id, Paranoid Pirate style: register on connect, any
broker message is a sign of life, and a broker silent for HEARTBEAT_LIVENESS
intervals means: reconnect on a new socket and register again.

Kernel: it answers every KernelRegister, KvAllocate, KvFree and KvBatch. The
allocations and frees of one loop turn go out together, at its end (`queue_change`,
`flush`): one alone as itself, several as one KvBatch. Any other message flushes
them first, so the kernel sees everything in the order it was made. The link is
online while it does; when an answer does not come within one heartbeat
interval the worker goes on with local KV accounting and re-registers every
interval on a fresh socket (a DEALER would otherwise queue every heartbeat for
a dead kernel and replay the lot when it returns).

Both sockets belong to the service thread. A link hands the service each
message's payload; the service routes it with its handler table
(`llmos.wire.Handlers`).
"""

from __future__ import annotations

import logging
import time

import zmq
from google.protobuf.message import Message

from llmos.wire import WireError, pack, pb
from llmos.wire.constants import HEARTBEAT_LIVENESS
from llmos.wire.kv_batch import KvOutbox
from llmos.wire.liveness import is_heartbeat_due
from llmos.wire.sockets import CurveOptions, connect_dealer

log = logging.getLogger(__name__)


class PeerLink:
    """A DEALER to one peer that can be replaced by a fresh one."""

    peer = "peer"

    def __init__(
        self,
        context: zmq.Context,
        poller: zmq.Poller,
        address: str,
        worker_id: str,
        interval_s: float,
        curve: CurveOptions | None = None,
    ) -> None:
        self.curve = curve
        self.context = context
        self.poller = poller
        self.address = address
        self.worker_id = worker_id
        self.interval_s = interval_s
        self.socket: zmq.Socket | None = None
        self.sent_at_s = 0.0  # the last message queued to the peer

    def reconnect(self, identity: str | None = None) -> None:
        if self.socket is not None:
            self.poller.unregister(self.socket)
            self.socket.close(linger=0)  # drop whatever was queued for the old connection
        self.socket = connect_dealer(self.context, self.address, identity=identity, curve=self.curve)
        self.poller.register(self.socket, zmq.POLLIN)

    def send(self, message: Message) -> None:
        assert self.socket is not None, "connect first"
        try:
            self.socket.send(pack(message), zmq.NOBLOCK)
            self.sent_at_s = time.monotonic()
        except zmq.Again:
            log.warning(
                "worker %s: %s queue full; dropped a %s", self.worker_id, self.peer, message.DESCRIPTOR.name
            )

    def receive(self) -> list[bytes]:
        """The payload of every message waiting on the socket; a message of more than
        one payload frame is logged and skipped."""
        payloads = []
        while self.socket is not None:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self.on_message()
            try:
                payloads.append(dealer_payload(frames))
            except WireError as exc:
                log.warning(
                    "worker %s ignored a bad frame from the %s: %s", self.worker_id, self.peer, exc.message
                )
        return payloads

    def on_message(self) -> None:
        """Hook: a frame arrived."""

    def close(self) -> None:
        if self.socket is not None:
            self.poller.unregister(self.socket)
            self.socket.close()  # with LINGER, so a last Disconnect still leaves
            self.socket = None


class BrokerLink(PeerLink):
    peer = "broker"
    is_heard = False  # a frame from the broker arrived on this connection
    seen_at_s = 0.0

    def connect(self, registration: pb.WorkerRegister) -> None:
        self.reconnect(identity=self.worker_id)
        self.send(registration)
        self.on_message()  # liveness counts from the connect
        self.is_heard = False  # until the broker sends something on this connection
        log.info("worker %s registering with the broker at %s", self.worker_id, self.address)

    def on_message(self) -> None:
        self.seen_at_s = time.monotonic()
        self.is_heard = True

    def is_silent(self, now_s: float) -> bool:
        return now_s - self.seen_at_s > HEARTBEAT_LIVENESS * self.interval_s

    def is_quiet(self, now_s: float) -> bool:
        """Sent the broker nothing of late: a heartbeat is due (any frame is a sign of life)."""
        return is_heartbeat_due(self.sent_at_s, now_s, self.interval_s)


class KernelLink(PeerLink):
    peer = "kernel"

    def __init__(self, *args, registration: pb.KernelRegister, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.registration = registration
        self.is_online: bool | None = None  # None until the first answer or silence
        self.register_sent_at_s: float | None = None  # a registration awaits its answer
        self.outbox = KvOutbox()

    def queue_change(self, change: pb.KvAllocate | pb.KvFree) -> None:
        """An allocation or free to send with the turn's others (`flush`)."""
        self.outbox.add(change)

    def flush(self) -> None:
        """Send the allocations and frees queued since the last flush."""
        for message in self.outbox.take():
            super().send(message)

    def send(self, message: Message) -> None:
        self.flush()
        super().send(message)

    def reconnect(self, identity: str | None = None) -> None:
        self.outbox.take()  # as what the old socket still queued: dropped with it
        super().reconnect(identity)

    def register(self, now_s: float, fresh_socket: bool) -> None:
        if fresh_socket or self.socket is None:
            self.reconnect()
        self.send(self.registration)
        self.register_sent_at_s = now_s

    def mark_registered(self, reply: pb.KernelReply) -> None:
        if not self.is_online:
            log.info(
                "worker %s registered with the kernel at %s: block size %d, %d KV blocks",
                self.worker_id,
                self.address,
                reply.block_size,
                reply.kv_blocks_total,
            )
        self.is_online = True
        self.register_sent_at_s = None

    @property
    def is_registering(self) -> bool:
        """A registration is on its way: its answer comes after the answers to everything
        sent before it."""
        return self.register_sent_at_s is not None

    def is_register_expired(self, now_s: float) -> bool:
        return self.register_sent_at_s is not None and now_s - self.register_sent_at_s > self.interval_s

    def go_offline(self, why: str) -> None:
        if self.is_online is not False:  # say it once, not at every retry
            log.warning(
                "worker %s: kernel at %s is not answering (%s); using local KV "
                "accounting and retrying registration every %.1f s",
                self.worker_id,
                self.address,
                why,
                self.interval_s,
            )
        self.is_online = False
        self.register_sent_at_s = None


def dealer_payload(frames: list[bytes]) -> bytes:
    """The payload of a message a DEALER received: [payload] or [b"", payload]."""
    if len(frames) == 1:
        return frames[0]
    if len(frames) == 2 and frames[0] == b"":
        return frames[1]
    raise WireError(pb.MALFORMED_FRAME, f"expected one payload frame, got {len(frames)} frames")
