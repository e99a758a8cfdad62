"""Protobuf in, plain data out (and back): the only scheduler module besides
`policies.decide` and the service that knows the wire types."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Generic, TypeVar, overload

from llmos.prefix import MAX_PREFIX_BLOCKS
from llmos.wire import WireError, pb
from scheduler_svc.data import (
    MIN_ANSWERS_FOR_FILL,
    KernelView,
    PendingRequest,
    PolicyDecision,
    RunningRequest,
    WorkerSlots,
)

NO_FILLS: Mapping[str, float] = {}  # no tier's fill known (read only)
# Prefix hashes guide placement only, so past these they are cut, never refused. Hashes
# chain, so a request's first MAX_PREFIX_BLOCKS are still a true prefix; a worker
# reports at most 1,024 and a view's index is built at every change.
MAX_VIEW_HASHES_PER_WORKER = 4_096
MAX_VIEW_HASHES = 262_144


def answer_fills(request: pb.ScheduleRequest) -> dict[str, float]:
    """Each tier's answer fill, where enough answers were counted to mean something."""
    return {
        answers.tier: answers.mean_fill
        for answers in request.tier_answers
        if answers.num_answers >= MIN_ANSWERS_FOR_FILL
    }


def pending_from_proto(request: pb.PendingRequest, fills: Mapping[str, float] = NO_FILLS) -> PendingRequest:
    return PendingRequest(
        request_id=request.request_id,
        tier_rank=request.tier_rank,
        tenant=request.tenant,
        model=request.model,
        prompt_chars=request.prompt_chars,
        max_tokens=request.max_tokens,
        arrival_seq=request.arrival_seq,
        generated_tokens=request.generated_tokens,
        prefix_hashes=tuple(request.prefix_hashes[:MAX_PREFIX_BLOCKS]),
        waited_s=request.waited_s,
        deadline_in_s=request.deadline_in_s,
        tier=request.tier,
        answer_fill=fills.get(request.tier, 0.0),
    )


def running_from_proto(request: pb.RunningRequest, fills: Mapping[str, float] = NO_FILLS) -> RunningRequest:
    return RunningRequest(
        request_id=request.request_id,
        worker_id=request.worker_id,
        tier_rank=request.tier_rank,
        tenant=request.tenant,
        prompt_chars=request.prompt_chars,
        generated_tokens=request.generated_tokens,
        max_tokens=request.max_tokens,
        arrival_seq=request.arrival_seq,
        running_s=request.running_s,
        tier=request.tier,
        tokens_since_dispatch=request.tokens_since_dispatch,
        answer_fill=fills.get(request.tier, 0.0),
    )


_Proto = TypeVar("_Proto")
_Plain = TypeVar("_Plain")


class Converted(Sequence[_Plain], Generic[_Proto, _Plain]):
    """A repeated field converted on first use: a policy that never looks at the
    running requests (most batches need no preemption) pays nothing for them."""

    def __init__(self, items: Sequence[_Proto], convert: Callable[[_Proto], _Plain]) -> None:
        self._items = items
        self._convert = convert
        self._converted: list[_Plain] | None = None

    def _all(self) -> list[_Plain]:
        if self._converted is None:
            self._converted = [self._convert(item) for item in self._items]
        return self._converted

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> _Plain: ...
    @overload
    def __getitem__(self, index: slice) -> list[_Plain]: ...

    def __getitem__(self, index: int | slice) -> _Plain | list[_Plain]:
        return self._all()[index]

    def __iter__(self) -> Iterator[_Plain]:
        return iter(self._all())


def kernel_view_from_proto(view: pb.ResourceView) -> KernelView:
    """Free blocks per worker, and the prefix index (block hash -> workers caching it).
    The scheduler converts each view once, when it arrives, not once per batch.

    A worker without a KV ledger (kv_blocks_total 0: embedding and classification
    models keep no cache) is left out of the block counts, so blocks never hold it back."""
    with_cache = [worker for worker in view.workers if worker.kv_blocks_total > 0]
    return KernelView.from_workers(
        block_size=view.block_size,
        kv_blocks_free={
            worker.worker_id: max(0, worker.kv_blocks_total - worker.kv_blocks_used) for worker in with_cache
        },
        cached_prefix_hashes=bounded_prefix_hashes(with_cache),
        largest_kv_blocks_total=max((worker.kv_blocks_total for worker in with_cache), default=0),
    )


def bounded_prefix_hashes(workers: Sequence[pb.WorkerResources]) -> dict[str, Sequence[int]]:
    """Each worker's cached hashes, cut to MAX_VIEW_HASHES_PER_WORKER (most recent
    first) and MAX_VIEW_HASHES in all, so indexing a view costs a bounded time."""
    hashes: dict[str, Sequence[int]] = {}
    room = MAX_VIEW_HASHES
    for worker in workers:
        kept = worker.cached_prefix_hashes[: min(MAX_VIEW_HASHES_PER_WORKER, room)]
        hashes[worker.worker_id] = kept
        room -= len(kept)
    return hashes


def measured_speed(tokens_per_s: float) -> float:
    """A speed placement may weigh: finite and positive, else 0 (not measured)."""
    return tokens_per_s if math.isfinite(tokens_per_s) and tokens_per_s > 0 else 0.0


def workers_from_proto(workers: Sequence[pb.WorkerSlots], view: KernelView | None) -> list[WorkerSlots]:
    """The workers with the view's free blocks; INVALID_ARGUMENT for a worker listed twice."""
    kv_blocks_free = {} if view is None else view.kv_blocks_free
    converted = [
        WorkerSlots(
            worker_id=worker.worker_id,
            models=tuple(worker.models),
            num_running=worker.num_running,
            max_num_seqs=worker.max_num_seqs,
            kv_blocks_free=kv_blocks_free.get(worker.worker_id),
            tokens_per_s=measured_speed(worker.tokens_per_s),
        )
        for worker in workers
    ]
    if len({worker.worker_id for worker in converted}) != len(converted):
        raise WireError(pb.INVALID_ARGUMENT, "schedule_request lists a worker twice")
    return converted


def fill_decision(decision: pb.ScheduleDecision, result: PolicyDecision) -> None:
    for preemption in result.preemptions:
        decision.preemptions.add(
            request_id=preemption.request_id, worker_id=preemption.worker_id, reason=preemption.reason
        )
    for placement in result.placements:
        decision.placements.add(request_id=placement.request_id, worker_id=placement.worker_id)
