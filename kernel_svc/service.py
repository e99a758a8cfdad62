"""The kernel process: a ROUTER for commands and queries, a PUB for resource views.

One loop: poll → route each message → purge expired leases and workers →
publish the view. Decisions about blocks live in `registry` and `accounting`;
this module only moves bytes and keeps time.
"""

from __future__ import annotations

import logging
import threading
import time

import zmq
from google.protobuf.message import Message

from kernel_svc import limits
from kernel_svc.config import KernelConfig
from kernel_svc.registry import WorkerRegistry, WorkerSpec, build_view
from kernel_svc.resource_pub import ResourcePublisher
from llmos.observability import always_ready, start_metrics
from llmos.security.authenticator import KERNEL_DOMAIN
from llmos.security.service_keys import open_service_keys
from llmos.service import run_service
from llmos.service_metrics import KernelCollector, RefusalCollector, registry_of
from llmos.wire import WireError, pack, pb
from llmos.wire.constants import ERROR_NAMES
from llmos.wire.envelope import error_frame, error_message
from llmos.wire.handlers import Handlers
from llmos.wire.peer_errors import PeerErrors
from llmos.wire.router import answer_request
from llmos.wire.sockets import bind_router, router_frames, send_reply

log = logging.getLogger(__name__)

# A burst of changes goes out as one view at most this often; with no change
# the view still goes out every heartbeat interval so new subscribers catch up.
MIN_PUBLISH_INTERVAL_S = 0.1
# Bounds how late a purge, a publish or a shutdown can be while no message arrives.
POLL_TIMEOUT_MS = 50
# A purge of silent workers walks every worker, so it runs at most this often rather
# than every loop turn; a silent worker is deleted up to this much later.
WORKER_PURGE_INTERVAL_S = 0.05
# Messages routed before the loop purges and publishes again, so a flood of
# requests cannot starve the timers.
MAX_MESSAGES_PER_POLL = 1000

_ROUTINE_ERRORS = frozenset({pb.NOT_ENOUGH_BLOCKS, pb.UNKNOWN_WORKER})


class Kernel:
    """The kernel's sockets, message handlers and timers around one WorkerRegistry."""

    def __init__(self, config: KernelConfig) -> None:
        self.config = config
        self.registry = WorkerRegistry(
            config.block_size, config.heartbeat_interval_ms, max_workers=config.max_workers
        )
        self.ledger = self.registry.ledger
        self.peer_errors = PeerErrors(log)
        self.context = zmq.Context()
        # the ZAP handler first: libzmq asks it at every CURVE handshake on the sockets below
        self.keys = open_service_keys("kernel", config.insecure, config.keys_dir, self.context)
        self.router = bind_router(self.context, config.kernel_bind, self.keys.server(KERNEL_DOMAIN))
        self.publisher = ResourcePublisher(
            self.context, config.kernel_pub_bind, self.peer_errors, self.keys.server(KERNEL_DOMAIN)
        )
        self.poller = zmq.Poller()
        self.poller.register(self.router, zmq.POLLIN)
        self.poller.register(self.publisher.socket, zmq.POLLIN)
        self.heartbeat_interval_s = config.heartbeat_interval_ms / 1000
        self._published_version: int | None = None
        self._published_at_s = float("-inf")
        self._next_worker_purge_s = 0.0
        self._view: pb.ResourceView | None = None  # the latest built, reused while nothing changed
        registry = registry_of(KernelCollector(lambda: self._view), RefusalCollector(self.peer_errors))
        self.metrics = start_metrics(config.metrics_host, config.metrics_port, registry, always_ready)
        self.handlers: Handlers[Message | None] = Handlers(
            "the kernel's port",
            {
                pb.KernelRegister: self.register_worker,
                pb.KernelHeartbeat: self.refresh_worker,
                pb.KvAllocate: self.allocate_blocks,
                pb.KvFree: self.free_blocks,
                pb.KvBatch: self.apply_batch,
                pb.ResourceQuery: self.answer_query,
                pb.Disconnect: self.delete_worker,
                pb.KvPrefixReport: self.report_prefixes,
            },
        )

    # ---------------------------------------------------------------- the loop

    def serve(self, stopping: threading.Event) -> None:
        config = self.config
        log.info(
            "kernel serving on %s, publishing views on %s (block_size %d, heartbeat %d ms)",
            config.kernel_bind,
            config.kernel_pub_bind,
            config.block_size,
            config.heartbeat_interval_ms,
        )
        while not stopping.is_set():
            events = dict(self.poller.poll(POLL_TIMEOUT_MS))
            now_s = time.monotonic()
            if self.router in events:
                self.route_pending(now_s)
            if self.publisher.socket in events or not self.publisher.is_bound:
                self.publisher.apply_subscriptions()
            self.purge_expired(now_s)
            self.publish_view(now_s)
            self.keys.poll_changes(now_s)  # the ZAP handler admits by the allowlist read last

    def close(self) -> None:
        self.router.close()
        self.publisher.close()
        self.keys.close()
        self.context.term()
        if self.metrics is not None:
            self.metrics.stop()

    # ---------------------------------------------------------------- routing

    def route_pending(self, now_s: float) -> None:
        for _ in range(MAX_MESSAGES_PER_POLL):
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.route(frames, now_s)

    def route(self, frames: list[bytes], now_s: float) -> None:
        """Answer one message; whatever its bytes, nothing raises out of here."""
        identity = frames[0]
        try:
            answer_request(self.router, frames, self.handlers, self.log_refusal, now_s, identity)
        except Exception:  # a bug: it costs this message its answer, never the kernel
            self.peer_errors.internal(identity)
            split = router_frames(frames)
            has_delimiter = split is not None and split[2]
            send_reply(self.router, identity, has_delimiter, error_frame(pb.INTERNAL, "kernel error; logged"))

    def log_refusal(self, identity: bytes, error: WireError) -> None:
        # a worker out of blocks or forgotten is routine; the rest is someone's bug, counted
        if error.code in _ROUTINE_ERRORS:
            log.info("refused request %r from peer %r: %s", error.request_id, identity, error.message)
        else:
            self.peer_errors.refused(ERROR_NAMES.get(error.code, str(error.code)), identity, error.message)

    def require_owner(self, worker_id: str, peer: bytes, request_id: str = "") -> None:
        """A worker speaks only from the connection it registered from; UNKNOWN_WORKER
        otherwise (its own connection, if it changed, registers again)."""
        if self.registry.is_owned_by(worker_id, peer):
            return
        if self.registry.has_worker(worker_id):
            self.peer_errors.refused("claim", peer, f"speaks for worker {worker_id!r}, not its own")
        raise unknown_worker(worker_id, request_id)

    # ---------------------------------------------------------------- handlers

    def register_worker(self, message: pb.KernelRegister, now_s: float, peer: bytes) -> pb.KernelReply:
        limits.check_register(message, self.registry.block_size)
        if not self.registry.has_room_for(message.worker_id):
            raise WireError(
                pb.UNAVAILABLE,
                f"the kernel holds its maximum of {self.registry.max_workers} workers; "
                "retry once a silent one expires",
                retry_after_ms=round(self.registry.expiry_s * 1000),
            )
        spec = WorkerSpec(
            worker_id=message.worker_id,
            models=tuple(message.models),
            device=message.device,
            memory_bytes_total=message.memory_bytes_total,
            memory_bytes_used=message.memory_bytes_used,
            kv_capacity_tokens=message.kv_capacity_tokens,
            max_num_seqs=message.max_num_seqs,
        )
        _, freed_block_ids = self.registry.require_worker(spec, now_s, peer)
        worker_id = spec.worker_id
        log.info(
            "worker %s registered: %d KV blocks of %d tokens, models %s, max_num_seqs %d",
            worker_id,
            self.ledger.num_blocks_total(worker_id),
            self.registry.block_size,
            list(spec.models),
            spec.max_num_seqs,
        )
        if freed_block_ids:
            log.warning(
                "worker %s registered again: freed the %d KV blocks its last run held",
                worker_id,
                len(freed_block_ids),
            )
        return self.kernel_reply(worker_id)

    def refresh_worker(self, message: pb.KernelHeartbeat, now_s: float, peer: bytes) -> None:
        self.require_owner(message.worker_id, peer)
        self.registry.refresh(message.worker_id, now_s, min(message.num_running, limits.MAX_NUM_SEQS))

    def allocate_blocks(self, message: pb.KvAllocate, now_s: float, peer: bytes) -> pb.KernelReply:
        worker_id, request_id = message.worker_id, message.request_id
        self.require_owner(worker_id, peer, request_id)
        self.registry.refresh(worker_id, now_s)
        limits.check_allocate(message)
        if not self.ledger.can_allocate(worker_id, message.num_blocks):
            raise WireError(
                pb.NOT_ENOUGH_BLOCKS,
                f"worker {worker_id} has {self.ledger.num_free_blocks(worker_id)} free "
                f"KV blocks; request {request_id} asked for {message.num_blocks}",
                request_id,
            )
        lease_s = message.lease_ms / 1000 if message.lease_ms else None
        allocation = self.ledger.allocate(
            worker_id, request_id, message.num_blocks, lease_s, now_s, tenant=message.tenant
        )
        log.debug(
            "worker %s request %s: +%d KV blocks, holds %d, %d free",
            worker_id,
            request_id,
            len(allocation.new_block_ids),
            len(allocation.block_ids),
            allocation.num_free_blocks,
        )
        return self.kernel_reply(worker_id, request_id)

    def free_blocks(self, message: pb.KvFree, now_s: float, peer: bytes) -> pb.KernelReply:
        worker_id, request_id = message.worker_id, message.request_id
        self.require_owner(worker_id, peer, request_id)
        self.registry.refresh(worker_id, now_s)
        limits.check_request_fields(request_id)
        freed_block_ids = self.ledger.free(worker_id, request_id)
        log.debug("worker %s request %s: freed %d KV blocks", worker_id, request_id, len(freed_block_ids))
        return self.kernel_reply(worker_id, request_id)

    def apply_batch(self, message: pb.KvBatch, now_s: float, peer: bytes) -> pb.KvBatchReply:
        """Each allocation and free in order, answered as it would be alone: its reply,
        or its refusal (logged as one alone is)."""
        limits.check_kv_batch(message)
        reply = pb.KvBatchReply()
        num_listed = 0  # block ids the reply lists so far
        for change in message.changes:
            result = reply.results.add()
            try:
                if change.HasField("allocate"):
                    self.check_reply_room(change.allocate, num_listed)
                    answer = self.allocate_blocks(change.allocate, now_s, peer)
                else:
                    answer = self.free_blocks(change.free, now_s, peer)
            except WireError as refused:
                self.log_refusal(peer, refused)
                result.error.CopyFrom(error_message(refused))
            else:
                result.reply.CopyFrom(answer)
                num_listed += len(answer.block_ids)
        return reply

    def check_reply_room(self, message: pb.KvAllocate, num_listed: int) -> None:
        """Refuse, unapplied, an allocation whose answer (every block the request would
        hold) would take a batch's reply past MAX_KV_BATCH_REPLY_BLOCK_IDS."""
        num_blocks = min(message.num_blocks, limits.MAX_BLOCKS_PER_WORKER)
        to_list = self.ledger.num_blocks_held(message.worker_id, message.request_id) + num_blocks
        if num_listed + to_list > limits.MAX_KV_BATCH_REPLY_BLOCK_IDS:
            raise limits.invalid(
                f"not applied: this kv_batch's reply would list more than "
                f"{limits.MAX_KV_BATCH_REPLY_BLOCK_IDS} block ids; send this allocation alone "
                "or in a smaller batch",
                message.request_id,
            )

    def report_prefixes(self, message: pb.KvPrefixReport, now_s: float, peer: bytes) -> None:
        """Refused past MAX_PREFIX_HASHES_PER_REPORT (the last report stands); within it,
        cut to what the registry keeps (`WorkerRegistry.max_prefix_hashes`)."""
        self.require_owner(message.worker_id, peer)
        limits.check_prefix_report(message)
        self.registry.report_prefixes(message.worker_id, message.block_hashes, now_s)

    def answer_query(self, message: pb.ResourceQuery, now_s: float, peer: bytes) -> pb.ResourceView:
        return self.current_view()

    def delete_worker(self, message: pb.Disconnect, now_s: float, peer: bytes) -> None:
        if not self.registry.has_worker(message.worker_id):
            log.info("worker %r disconnected but was not registered", message.worker_id[:128])
            return
        self.require_owner(message.worker_id, peer)
        freed_block_ids = self.registry.delete_worker(message.worker_id)
        log.info(
            "worker %s disconnected (%s): freed %d KV blocks",
            message.worker_id,
            message.reason or "no reason given",
            len(freed_block_ids),
        )

    def kernel_reply(self, worker_id: str, request_id: str = "") -> pb.KernelReply:
        return pb.KernelReply(
            request_id=request_id,
            block_ids=self.ledger.block_ids(worker_id, request_id),
            block_size=self.registry.block_size,
            num_free_blocks=self.ledger.num_free_blocks(worker_id),
            kv_blocks_total=self.ledger.num_blocks_total(worker_id),
        )

    # ---------------------------------------------------------------- timers

    def purge_expired(self, now_s: float) -> None:
        for worker_id, request_id, block_ids in self.ledger.purge_expired_leases(now_s):
            log.info(
                "worker %s request %s: lease expired, freed %d KV blocks",
                worker_id,
                request_id,
                len(block_ids),
            )
        if now_s < self._next_worker_purge_s:
            return
        self._next_worker_purge_s = now_s + WORKER_PURGE_INTERVAL_S
        for worker_id, block_ids in self.registry.purge_expired(now_s).items():
            log.warning(
                "worker %s silent for %.1f s: deleted, freed %d KV blocks",
                worker_id,
                self.registry.expiry_s,
                len(block_ids),
            )

    def publish_view(self, now_s: float) -> None:
        """Publish when the view changed (coalesced) or a heartbeat interval passed."""
        since_s = now_s - self._published_at_s
        has_changed = self.registry.version != self._published_version
        if not ((has_changed and since_s >= MIN_PUBLISH_INTERVAL_S) or since_s >= self.heartbeat_interval_s):
            return
        view = self.current_view()
        self.publisher.publish(pack(view))
        self._published_version = view.version
        self._published_at_s = now_s

    def current_view(self) -> pb.ResourceView:
        """The view, built again only when the registry changed: a flood of queries
        costs a copy each, not a walk over every worker's prefix hashes."""
        if self._view is None or self._view.version != self.registry.version:
            self._view = build_view(self.registry, time.time())
        else:
            self._view.published_at_s = time.time()
        return self._view


def unknown_worker(worker_id: str, request_id: str = "") -> WireError:
    return WireError(
        pb.UNKNOWN_WORKER,
        f"worker {worker_id!r} is not registered with the kernel; register again",
        request_id,
    )


def run(config: KernelConfig) -> None:
    run_service("kernel", lambda: Kernel(config), config.log_format)
