"""Synthetic queues, workers and kernel views for driving policies without sockets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from scheduler_svc.data import KernelView, PendingRequest, PolicyDecision, RunningRequest, WorkerSlots
from scheduler_svc.policies import SchedulingPolicy, make_policy

BLOCK_SIZE = 16


def make_request(
    request_id: str, tier_rank: int = 0, arrival_seq: int = 0, model: str = "", **fields: Any
) -> PendingRequest:
    return PendingRequest(request_id, tier_rank=tier_rank, model=model, arrival_seq=arrival_seq, **fields)


def make_running(request_id: str, worker_id: str, tier_rank: int = 0, **fields: Any) -> RunningRequest:
    return RunningRequest(request_id, worker_id, tier_rank=tier_rank, **fields)


def make_worker(
    worker_id: str,
    models: tuple[str, ...] = ("tiny",),
    num_running: int = 0,
    max_num_seqs: int = 8,
    kv_blocks_free: int | None = None,
    tokens_per_s: float = 0.0,
) -> WorkerSlots:
    return WorkerSlots(worker_id, models, num_running, max_num_seqs, kv_blocks_free, tokens_per_s)


def make_view(cached: Mapping[str, Sequence[int]] | None = None, block_size: int = BLOCK_SIZE) -> KernelView:
    """A kernel view: `cached` = worker id -> the prompt block hashes its KV cache holds
    (free blocks come from make_worker's kv_blocks_free, as `decide` merges them)."""
    return KernelView.from_workers(block_size, {}, cached or {})


def schedule(
    policy: str | SchedulingPolicy,
    pending: Sequence[PendingRequest],
    workers: Sequence[WorkerSlots],
    running: Sequence[RunningRequest] = (),
    view: KernelView | None = None,
) -> PolicyDecision:
    if isinstance(policy, str):
        policy = make_policy(policy)
    return policy.schedule(pending, running, workers, view)


def placed(decision: PolicyDecision) -> list[tuple[str, str]]:
    return [(p.request_id, p.worker_id) for p in decision.placements]


def placed_ids(decision: PolicyDecision) -> list[str]:
    return [p.request_id for p in decision.placements]


def preempted(decision: PolicyDecision) -> list[tuple[str, str]]:
    return [(p.request_id, p.worker_id) for p in decision.preemptions]
