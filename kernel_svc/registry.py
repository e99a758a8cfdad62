"""The kernel's worker registry: who is alive, what it holds, and the view of it.

Registry verbs as in the zguide's mdbroker, so each call says what it does: `require_worker`,
`refresh`, `purge_expired`, `delete_worker`. The registry owns the KV ledger
so that a worker leaving, by Disconnect or by silence, frees its blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kernel_svc.accounting import KvLedger
from llmos.wire import pb
from llmos.wire.constants import HEARTBEAT_LIVENESS

# Every worker's prefix hashes together, as the view carries them: a view past this
# would be tens of MB sent every 100 ms and indexed by every scheduler. A report that
# would push the total past it is cut to what is left.
MAX_PREFIX_HASHES_IN_VIEW = 1_048_576


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker says about itself in KernelRegister."""

    worker_id: str
    models: tuple[str, ...] = ()
    device: str = ""
    memory_bytes_total: int = 0
    memory_bytes_used: int = 0
    kv_capacity_tokens: int = 0
    max_num_seqs: int = 0


@dataclass
class WorkerRecord:
    spec: WorkerSpec
    last_seen_s: float
    peer: bytes = b""  # the connection it registered from: only it may speak for the worker
    num_running: int = 0
    cached_prefix_hashes: tuple[int, ...] = ()  # the prefix index: what its KV cache holds


class WorkerRegistry:
    def __init__(
        self,
        block_size: int,
        heartbeat_interval_ms: int,
        ledger: KvLedger | None = None,
        max_workers: int = 1024,
    ) -> None:
        assert block_size > 0 and heartbeat_interval_ms > 0 and max_workers > 0
        self.block_size = block_size
        self.expiry_s = HEARTBEAT_LIVENESS * heartbeat_interval_ms / 1000
        self.max_workers = max_workers
        self.ledger = ledger if ledger is not None else KvLedger()
        self._workers: dict[str, WorkerRecord] = {}
        self._num_changes = 0
        self._num_prefix_hashes = 0  # over every worker, within MAX_PREFIX_HASHES_IN_VIEW

    @property
    def version(self) -> int:
        """Grows with every change to the registry or the ledger."""
        return self._num_changes + self.ledger.version

    def has_worker(self, worker_id: str) -> bool:
        return worker_id in self._workers

    def worker(self, worker_id: str) -> WorkerRecord:
        return self._workers[worker_id]

    def workers(self) -> list[WorkerRecord]:
        return [self._workers[worker_id] for worker_id in sorted(self._workers)]

    def has_room_for(self, worker_id: str) -> bool:
        """Can `worker_id` register: it is registered already (again), or a place is free?"""
        return worker_id in self._workers or len(self._workers) < self.max_workers

    def is_owned_by(self, worker_id: str, peer: bytes) -> bool:
        """Is `worker_id` registered, from the connection `peer`?"""
        record = self._workers.get(worker_id)
        return record is not None and record.peer == peer

    def require_worker(
        self, spec: WorkerSpec, now_s: float, peer: bytes = b""
    ) -> tuple[WorkerRecord, list[int]]:
        """Register `spec` (again) from `peer`. Return its record and the block ids that a
        previous registration held: a worker registers when it starts, so
        whatever its earlier self was granted is gone with that process."""
        assert spec.worker_id, "a worker needs an id"
        assert self.has_room_for(spec.worker_id), f"{self.max_workers} workers are registered"
        freed_block_ids = self.delete_worker(spec.worker_id)
        self._workers[spec.worker_id] = WorkerRecord(spec, last_seen_s=now_s, peer=peer)
        self.ledger.add_worker(spec.worker_id, spec.kv_capacity_tokens // self.block_size)
        self._num_changes += 1
        return self._workers[spec.worker_id], freed_block_ids

    def refresh(self, worker_id: str, now_s: float, num_running: int | None = None) -> bool:
        """Note a sign of life (and the running count a heartbeat carries);
        False when the worker is unknown and must register again."""
        record = self._workers.get(worker_id)
        if record is None:
            return False
        record.last_seen_s = now_s
        if num_running is not None and num_running != record.num_running:
            record.num_running = num_running
            self._num_changes += 1
        return True

    def max_prefix_hashes(self, worker_id: str) -> int:
        """How many hashes a report of `worker_id` keeps: no more than its KV blocks
        (a cache holds no more prefixes than blocks) nor than the view has room for."""
        record = self._workers[worker_id]
        room = MAX_PREFIX_HASHES_IN_VIEW - self._num_prefix_hashes + len(record.cached_prefix_hashes)
        return min(self.ledger.num_blocks_total(worker_id), room)

    def report_prefixes(self, worker_id: str, block_hashes: Sequence[int], now_s: float) -> bool:
        """Replace a worker's cached prefix blocks with the first `max_prefix_hashes` of
        `block_hashes` (workers list the most recent first); False when it is unknown."""
        if not self.refresh(worker_id, now_s):
            return False
        record = self._workers[worker_id]
        kept = tuple(block_hashes[: self.max_prefix_hashes(worker_id)])
        if kept != record.cached_prefix_hashes:
            self._num_prefix_hashes += len(kept) - len(record.cached_prefix_hashes)
            record.cached_prefix_hashes = kept
            self._num_changes += 1
        return True

    def delete_worker(self, worker_id: str) -> list[int]:
        """Forget a worker; return the block ids its requests held."""
        record = self._workers.pop(worker_id, None)
        if record is None:
            return []
        self._num_prefix_hashes -= len(record.cached_prefix_hashes)
        self._num_changes += 1
        return self.ledger.remove_worker(worker_id)

    def purge_expired(self, now_s: float) -> dict[str, list[int]]:
        """Delete every worker silent for HEARTBEAT_LIVENESS intervals; return
        {worker id: the block ids it held}."""
        expired = [
            worker_id
            for worker_id, record in self._workers.items()
            if now_s - record.last_seen_s > self.expiry_s
        ]
        return {worker_id: self.delete_worker(worker_id) for worker_id in expired}


def build_view(registry: WorkerRegistry, published_at_s: float) -> pb.ResourceView:
    """The ResourceView the kernel publishes and answers ResourceQuery with."""
    view = pb.ResourceView(
        version=registry.version, block_size=registry.block_size, published_at_s=published_at_s
    )
    ledger = registry.ledger
    for record in registry.workers():
        spec = record.spec
        view.workers.add(
            worker_id=spec.worker_id,
            models=spec.models,
            device=spec.device,
            memory_bytes_total=spec.memory_bytes_total,
            memory_bytes_used=spec.memory_bytes_used,
            kv_blocks_total=ledger.num_blocks_total(spec.worker_id),
            kv_blocks_used=ledger.num_used_blocks(spec.worker_id),
            num_running=record.num_running,
            max_num_seqs=spec.max_num_seqs,
            num_requests_holding_blocks=ledger.num_requests(spec.worker_id),
            cached_prefix_hashes=record.cached_prefix_hashes,
        )
    for tenant, (num_blocks, num_requests) in sorted(ledger.tenant_usage().items()):
        view.tenants.add(tenant=tenant, kv_blocks_used=num_blocks, num_requests_holding_blocks=num_requests)
    return view
