"""Where a request goes: the placement every policy shares (policies only choose the order).

Among the workers that serve the request's model, have a free slot and have
the KV blocks it needs (or that the kernel does not know):
  1. the one whose KV cache holds the longest prefix of the prompt,
  2. then the one with the most free KV blocks, counted up to KV_PLENTY_BLOCKS:
     past that, more free blocks are no reason to prefer a worker, and a worker
     the kernel's view does not list yet (it just registered) counts as plenty,
  3. then the least loaded for its speed: the fewest running requests (the
     newcomer counted) per token a second one request gets there, as the broker
     measured it; a worker not measured yet counts at the measured ones' mean
     speed (all of them at one speed when none is). A worker 10 times as fast
     takes 10 times the requests, as weighted least-connections balancing does;
  4. then the smallest worker id.
So while every cache has room, load decides; as caches fill, free blocks do.

Cost per request stays logarithmic in the number of workers. Block hashes chain
all earlier blocks, so a worker holding block i's hash holds the prompt's first
i+1 blocks: the deepest of the prompt's hashes found in the kernel's index names
the best-matching workers, one dict look-up per block. Candidates wait in heaps
ordered by (2, 3): one per model, and one per (model, block hash) built the
first time a request asks for that hash.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass

from scheduler_svc.data import (
    ANY_MODEL,
    KernelView,
    PendingRequest,
    Placement,
    RunningRequest,
    WorkerSlots,
    blocks_held,
    blocks_needed,
)

__all__ = ["ANY_MODEL", "PendingRequest", "Placement", "Placer", "RunningRequest", "WorkerSlots"]

# (-free blocks, load for its speed, worker_id, version): the best worker on top. An
# entry whose version is not its worker's is stale: the worker changed since.
_Entry = tuple[int, float, str, int]
_NO_PREFIX = None
KV_PLENTY_BLOCKS = 512  # 8,192 tokens at 16 per block: room for any usual request


@dataclass
class _Worker:
    """A worker as this batch changes it."""

    worker_id: str
    models: frozenset[str]
    num_running: int
    max_num_seqs: int
    kv_blocks_free: int | None
    tokens_per_s: float  # one request's speed here (placement's weight, never 0)
    version: int = 0

    def has_free_slot(self) -> bool:
        return self.num_running < self.max_num_seqs

    def serves(self, model: str) -> bool:
        return model == ANY_MODEL or model in self.models

    def fits(self, model: str, num_blocks: int) -> bool:
        return (
            self.has_free_slot()
            and self.serves(model)
            and (self.kv_blocks_free is None or self.kv_blocks_free >= num_blocks)
        )

    def entry(self) -> _Entry:
        free = KV_PLENTY_BLOCKS if self.kv_blocks_free is None else self.kv_blocks_free
        return (-min(free, KV_PLENTY_BLOCKS), self.load(), self.worker_id, self.version)

    def load(self) -> float:
        """Running requests, a newcomer counted, per token a second one request gets here."""
        return (self.num_running + 1) / self.tokens_per_s


class _Candidates:
    """Workers with a free slot, best first.

    Entries are refreshed lazily: a stale one surfacing at the top is replaced
    by its worker's current entry. Placing only makes a worker's rank worse, so
    the heap order holds; `place_instead` may make it better (the victim freed
    more blocks than the newcomer takes), and the worker then waits a little
    lower than it should until it surfaces.
    """

    def __init__(self, workers: Iterable[_Worker]) -> None:
        self.heap: list[_Entry] = [worker.entry() for worker in workers if worker.has_free_slot()]
        heapq.heapify(self.heap)

    def best(self, workers: dict[str, _Worker], num_blocks: int) -> str | None:
        heap = self.heap
        while heap:
            worker = workers[heap[0][2]]
            if heap[0][3] != worker.version:
                if worker.has_free_slot():
                    heapq.heapreplace(heap, worker.entry())
                else:
                    heapq.heappop(heap)  # full: it leaves this heap for the batch
                continue
            if worker.kv_blocks_free is None or worker.kv_blocks_free >= num_blocks:
                return worker.worker_id
            if num_blocks <= KV_PLENTY_BLOCKS:
                return None  # the top has the most free blocks (all below plenty): too few
            return self._most_free(workers, num_blocks)  # a huge request: rare, so a scan
        return None

    def _most_free(self, workers: dict[str, _Worker], num_blocks: int) -> str | None:
        fitting = [
            workers[entry[2]]
            for entry in self.heap
            if entry[3] == workers[entry[2]].version and workers[entry[2]].fits(ANY_MODEL, num_blocks)
        ]
        best = min(fitting, key=lambda w: (-(w.kv_blocks_free or 0), w.load()), default=None)
        return best.worker_id if best is not None else None


class Placer:
    """Places one batch: `find_worker` checks, `place` acts and asserts what the check
    promised; `can_preempt_for` and `place_instead` do the same for the slot a
    preemption frees."""

    def __init__(self, workers: Iterable[WorkerSlots], view: KernelView | None = None) -> None:
        self.view = view or KernelView()
        self._workers: dict[str, _Worker] = {}
        self.num_free_slots = 0
        workers = list(workers)
        measured = [slots.tokens_per_s for slots in workers if slots.tokens_per_s > 0]
        unmeasured_speed = sum(measured) / len(measured) if measured else 1.0
        for slots in workers:
            worker = _Worker(
                slots.worker_id,
                frozenset(slots.models),
                slots.num_running,
                slots.max_num_seqs,
                slots.kv_blocks_free,
                slots.tokens_per_s if slots.tokens_per_s > 0 else unmeasured_speed,
            )
            assert worker.worker_id not in self._workers, f"worker {worker.worker_id} listed twice"
            self._workers[worker.worker_id] = worker
            self.num_free_slots += max(0, worker.max_num_seqs - worker.num_running)
        # (model, block hash or _NO_PREFIX) -> candidates, built on first use
        self._candidates: dict[tuple[str, int | None], _Candidates] = {}

    # ------------------------------------------------------------ check

    def blocks_needed(self, request: PendingRequest) -> int:
        num_blocks = blocks_needed(request, self.view.block_size)
        if self.view.largest_kv_blocks_total:
            return min(num_blocks, self.view.largest_kv_blocks_total)
        return num_blocks

    def serves(self, worker_id: str, model: str) -> bool:
        worker = self._workers.get(worker_id)
        return worker is not None and worker.serves(model)

    def find_worker(self, request: PendingRequest) -> str | None:
        """The best worker for `request` now, or None when it fits nowhere."""
        if self.num_free_slots == 0:
            return None
        num_blocks = self.blocks_needed(request)
        index = self.view.workers_by_block_hash
        for block_hash in reversed(request.prefix_hashes):  # deepest cached block first
            if block_hash in index:
                worker_id = self._candidates_for(request.model, block_hash).best(self._workers, num_blocks)
                if worker_id is not None:
                    return worker_id
        return self._candidates_for(request.model, _NO_PREFIX).best(self._workers, num_blocks)

    def can_preempt_for(self, request: PendingRequest, victim: RunningRequest) -> bool:
        """Would `request` fit on the victim's worker once the victim stops?"""
        worker = self._workers.get(victim.worker_id)
        if (
            worker is None
            or not worker.serves(request.model)
            or worker.num_running == 0
            or worker.num_running > worker.max_num_seqs
        ):  # one slot freed would not do
            return False
        return worker.kv_blocks_free is None or (
            worker.kv_blocks_free + blocks_held(victim, self.view.block_size) >= self.blocks_needed(request)
        )

    # ------------------------------------------------------------ act

    def place(self, request: PendingRequest, worker_id: str) -> Placement:
        worker = self._workers[worker_id]
        num_blocks = self.blocks_needed(request)
        assert worker.fits(request.model, num_blocks), f"{request.request_id} does not fit {worker_id}"
        worker.num_running += 1
        if worker.kv_blocks_free is not None:
            worker.kv_blocks_free -= num_blocks
        worker.version += 1
        self.num_free_slots -= 1
        return Placement(request.request_id, worker_id)

    def place_instead(self, victim: RunningRequest, request: PendingRequest) -> Placement:
        """Preempt `victim` and give its slot and blocks to `request` (one act, so a
        worker that was full never needs to rejoin the heaps: it is full again)."""
        worker = self._workers[victim.worker_id]
        assert worker.num_running > 0, f"worker {worker.worker_id} runs nothing to preempt"
        worker.num_running -= 1
        if worker.kv_blocks_free is not None:
            worker.kv_blocks_free += blocks_held(victim, self.view.block_size)
        self.num_free_slots += 1
        return self.place(request, worker.worker_id)

    # ------------------------------------------------------------ inside

    def _candidates_for(self, model: str, block_hash: int | None) -> _Candidates:
        key = (model, block_hash)
        candidates = self._candidates.get(key)
        if candidates is None:
            if block_hash is _NO_PREFIX:
                pool: Iterable[_Worker] = self._workers.values()
            else:
                pool = (
                    self._workers[worker_id]
                    for worker_id in self.view.workers_by_block_hash[block_hash]
                    if worker_id in self._workers
                )
            candidates = self._candidates[key] = _Candidates(w for w in pool if w.serves(model))
        return candidates
