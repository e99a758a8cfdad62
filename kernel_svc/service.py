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

from kernel_svc.config import KernelConfig
from kernel_svc.registry import WorkerRegistry, WorkerSpec, build_view
from llmos.service import run_service
from llmos.wire import WireError, pack, pb
from llmos.wire.constants import RESOURCE_TOPIC
from llmos.wire.handlers import Handlers
from llmos.wire.router import answer_request
from llmos.wire.sockets import bind_pub, bind_router

log = logging.getLogger(__name__)

# A burst of changes goes out as one view at most this often; with no change
# the view still goes out every heartbeat interval so new subscribers catch up.
MIN_PUBLISH_INTERVAL_S = 0.1
# Bounds how late a purge, a publish or a shutdown can be while no message arrives.
POLL_TIMEOUT_MS = 50
# Messages routed before the loop purges and publishes again, so a flood of
# requests cannot starve the timers.
MAX_MESSAGES_PER_POLL = 1000

_ROUTINE_ERRORS = frozenset({pb.NOT_ENOUGH_BLOCKS, pb.UNKNOWN_WORKER})


class Kernel:
    """The kernel's sockets, message handlers and timers around one WorkerRegistry."""

    def __init__(self, config: KernelConfig) -> None:
        self.config = config
        self.registry = WorkerRegistry(config.block_size, config.heartbeat_interval_ms)
        self.ledger = self.registry.ledger
        self.context = zmq.Context()
        self.router = bind_router(self.context, config.kernel_bind)
        self.pub = bind_pub(self.context, config.kernel_pub_bind)
        self.poller = zmq.Poller()
        self.poller.register(self.router, zmq.POLLIN)
        self.heartbeat_interval_s = config.heartbeat_interval_ms / 1000
        self._published_version: int | None = None
        self._published_at_s = float("-inf")
        self.handlers: Handlers[Message | None] = Handlers(
            "the kernel's port",
            {
                pb.KernelRegister: self.register_worker,
                pb.KernelHeartbeat: self.refresh_worker,
                pb.KvAllocate: self.allocate_blocks,
                pb.KvFree: self.free_blocks,
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
            self.purge_expired(now_s)
            self.publish_view(now_s)

    def close(self) -> None:
        self.router.close()
        self.pub.close()
        self.context.term()

    # ---------------------------------------------------------------- routing

    def route_pending(self, now_s: float) -> None:
        for _ in range(MAX_MESSAGES_PER_POLL):
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.route(frames, now_s)

    def route(self, frames: list[bytes], now_s: float) -> None:
        answer_request(self.router, frames, self.handlers, self.log_refusal, now_s)

    @staticmethod
    def log_refusal(identity: bytes, error: WireError) -> None:
        # a worker out of blocks or forgotten is routine; a bad frame is someone's bug
        level = logging.INFO if error.code in _ROUTINE_ERRORS else logging.WARNING
        log.log(
            level,
            "refused %s from peer %r: %s",
            f"request {error.request_id}" if error.request_id else "a message",
            identity,
            error.message,
        )

    # ---------------------------------------------------------------- handlers

    def register_worker(self, message: pb.KernelRegister, now_s: float) -> pb.KernelReply:
        if not message.worker_id:
            raise WireError(pb.INVALID_ARGUMENT, "kernel_register needs a worker_id")
        spec = WorkerSpec(
            worker_id=message.worker_id,
            models=tuple(message.models),
            device=message.device,
            memory_bytes_total=message.memory_bytes_total,
            memory_bytes_used=message.memory_bytes_used,
            kv_capacity_tokens=message.kv_capacity_tokens,
            max_num_seqs=message.max_num_seqs,
        )
        _, freed_block_ids = self.registry.require_worker(spec, now_s)
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

    def refresh_worker(self, message: pb.KernelHeartbeat, now_s: float) -> None:
        if not self.registry.refresh(message.worker_id, now_s, message.num_running):
            raise unknown_worker(message.worker_id)

    def allocate_blocks(self, message: pb.KvAllocate, now_s: float) -> pb.KernelReply:
        worker_id, request_id = message.worker_id, message.request_id
        if not self.registry.refresh(worker_id, now_s):
            raise unknown_worker(worker_id, request_id)
        if not request_id:
            raise WireError(pb.INVALID_ARGUMENT, "kv_allocate needs a request_id")
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

    def free_blocks(self, message: pb.KvFree, now_s: float) -> pb.KernelReply:
        worker_id, request_id = message.worker_id, message.request_id
        if not self.registry.refresh(worker_id, now_s):
            raise unknown_worker(worker_id, request_id)
        freed_block_ids = self.ledger.free(worker_id, request_id)
        log.debug("worker %s request %s: freed %d KV blocks", worker_id, request_id, len(freed_block_ids))
        return self.kernel_reply(worker_id, request_id)

    def report_prefixes(self, message: pb.KvPrefixReport, now_s: float) -> None:
        if not self.registry.report_prefixes(message.worker_id, list(message.block_hashes), now_s):
            raise unknown_worker(message.worker_id)

    def answer_query(self, message: pb.ResourceQuery, now_s: float) -> pb.ResourceView:
        return build_view(self.registry, time.time())

    def delete_worker(self, message: pb.Disconnect, now_s: float) -> None:
        if not self.registry.has_worker(message.worker_id):
            log.info("worker %s disconnected but was not registered", message.worker_id)
            return
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
        view = build_view(self.registry, time.time())
        self.pub.send_multipart([RESOURCE_TOPIC, pack(view)])
        self._published_version = view.version
        self._published_at_s = now_s


def unknown_worker(worker_id: str, request_id: str = "") -> WireError:
    return WireError(
        pb.UNKNOWN_WORKER,
        f"worker {worker_id!r} is not registered with the kernel; register again",
        request_id,
    )


def run(config: KernelConfig) -> None:
    run_service("kernel", lambda: Kernel(config))
