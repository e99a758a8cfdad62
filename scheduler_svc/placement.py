"""Plain data for placement, and the least-loaded placement every policy shares.

No sockets and no protobuf here (STYLE.md 2): policies order requests, and
`place_least_loaded` puts them, in that order, on workers.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Iterable, Sequence

ANY_MODEL = ""  # a request for model "" runs on any worker


@dataclass(frozen=True)
class PendingRequest:
    request_id: str
    tier_rank: int = 0        # 0 = highest tier
    tenant: str = ""
    model: str = ANY_MODEL
    prompt_chars: int = 0
    max_tokens: int = 0
    arrival_seq: int = 0      # admission order at the broker


@dataclass(frozen=True)
class WorkerSlots:
    worker_id: str
    models: tuple[str, ...] = ()
    num_running: int = 0
    max_num_seqs: int = 0
    kv_blocks_free: int | None = None  # None: the kernel's view does not know this worker


@dataclass(frozen=True)
class Placement:
    request_id: str
    worker_id: str


# heap entry: (num_running when pushed, unknown KV, -free KV blocks, worker_id)
_Entry = tuple[int, bool, int, str]


class _LeastLoaded:
    """Workers with a free slot, least loaded first, one heap per model.

    A worker that serves several models sits in several heaps. Taking a slot
    pushes a fresh entry everywhere; the old ones go stale (their num_running
    no longer matches) and are dropped when they reach a heap's top.
    """

    def __init__(self, workers: Iterable[WorkerSlots]) -> None:
        self._workers: dict[str, WorkerSlots] = {}
        self._num_running: dict[str, int] = {}
        self._heaps: dict[str, list[_Entry]] = {ANY_MODEL: []}
        for worker in workers:
            self._workers[worker.worker_id] = worker
            self._num_running[worker.worker_id] = worker.num_running
            for model in self._models_of(worker):
                self._heaps.setdefault(model, [])
            self._push(worker)

    @staticmethod
    def _models_of(worker: WorkerSlots) -> set[str]:
        return {ANY_MODEL, *worker.models}

    def _push(self, worker: WorkerSlots) -> None:
        num_running = self._num_running[worker.worker_id]
        if num_running >= worker.max_num_seqs:
            return  # full: it leaves every heap as its stale entries surface
        # unknown KV sorts after any known amount: prefer workers the kernel has seen
        entry = (num_running, worker.kv_blocks_free is None, -(worker.kv_blocks_free or 0),
                 worker.worker_id)
        for model in self._models_of(worker):
            heapq.heappush(self._heaps[model], entry)

    def take_slot(self, model: str) -> str | None:
        """The least-loaded worker serving `model` with a free slot (now one
        slot fuller), or None when there is none."""
        heap = self._heaps.get(model)
        while heap:
            num_running, _, _, worker_id = heapq.heappop(heap)
            if num_running != self._num_running[worker_id]:
                continue  # stale: this worker took a slot since the entry was pushed
            self._num_running[worker_id] += 1
            self._push(self._workers[worker_id])
            return worker_id
        return None


def place_least_loaded(ordered: Iterable[PendingRequest],
                       workers: Sequence[WorkerSlots]) -> list[Placement]:
    """Place requests in the given order, each on the least-loaded worker that
    serves its model and still has a free slot (counting this batch's
    placements): least num_running, then most free KV blocks, then worker_id.
    A request that fits nowhere stays pending; later ones may still fit."""
    slots = _LeastLoaded(workers)
    placements: list[Placement] = []
    for request in ordered:
        worker_id = slots.take_slot(request.model)
        if worker_id is not None:
            placements.append(Placement(request.request_id, worker_id))
    return placements
