"""Scheduling policies: an interface, its implementations, and a factory (STYLE.md 3).

`decide` turns a ScheduleRequest (and the kernel's view, when there is one)
into a ScheduleDecision. The scheduler process calls it for every batch, and
the broker calls the very same function when the scheduler is down, so it
touches no socket and no global state.

Adding a policy: one SchedulingPolicy subclass, one PolicyName member, one
row in _POLICIES.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from enum import Enum
from typing import Sequence

from llmos.wire import pb
from scheduler_svc.placement import PendingRequest, Placement, WorkerSlots, place_least_loaded


class PolicyName(str, Enum):
    FCFS = "fcfs"          # arrival order only
    PRIORITY = "priority"  # tier rank, then arrival order (the default)

    def __str__(self) -> str:  # "fcfs" in logs and status lines, not "PolicyName.FCFS"
        return self.value

    @classmethod
    def parse(cls, name: str) -> PolicyName:
        try:
            return cls(name)
        except ValueError:
            choices = ", ".join(member.value for member in cls)
            raise ValueError(f"unknown scheduling policy {name!r}; choose one of: {choices}") from None


class SchedulingPolicy(ABC):
    name: PolicyName

    @abstractmethod
    def schedule(self, pending: Sequence[PendingRequest],
                 workers: Sequence[WorkerSlots]) -> list[Placement]:
        """The placements to make now, in dispatch order."""


class FcfsPolicy(SchedulingPolicy):
    """First come, first served, whatever the tier."""

    name = PolicyName.FCFS

    def schedule(self, pending: Sequence[PendingRequest],
                 workers: Sequence[WorkerSlots]) -> list[Placement]:
        return place_least_loaded(sorted(pending, key=lambda r: r.arrival_seq), workers)


class PriorityPolicy(SchedulingPolicy):
    """Higher tiers first (lower tier_rank); first come, first served within a tier."""

    name = PolicyName.PRIORITY

    def schedule(self, pending: Sequence[PendingRequest],
                 workers: Sequence[WorkerSlots]) -> list[Placement]:
        ordered = sorted(pending, key=lambda r: (r.tier_rank, r.arrival_seq))
        return place_least_loaded(ordered, workers)


_POLICIES: dict[PolicyName, type[SchedulingPolicy]] = {
    PolicyName.FCFS: FcfsPolicy,
    PolicyName.PRIORITY: PriorityPolicy,
}


def make_policy(name: str) -> SchedulingPolicy:
    """The policy called `name`; ValueError naming the choices when there is none."""
    return _POLICIES[PolicyName.parse(name)]()


# ---------------------------------------------------------------- protobuf in, protobuf out

_MAX_DECISION_US = 2**32 - 1  # ScheduleDecision.decision_us is a uint32


def decide(policy: SchedulingPolicy, request: pb.ScheduleRequest,
           view: pb.ResourceView | None) -> pb.ScheduleDecision:
    """Run `policy` on one batch; free KV blocks come from the kernel's `view`
    when there is one."""
    started_ns = time.perf_counter_ns()
    pending = [pending_from_proto(p) for p in request.pending]
    workers = workers_from_proto(request.workers, view)
    placements = policy.schedule(pending, workers)
    decision = pb.ScheduleDecision(batch_id=request.batch_id, policy=policy.name.value)
    for placement in placements:
        decision.placements.add(request_id=placement.request_id, worker_id=placement.worker_id)
    elapsed_us = (time.perf_counter_ns() - started_ns) // 1000
    decision.decision_us = min(elapsed_us, _MAX_DECISION_US)
    return decision


def pending_from_proto(request: pb.PendingRequest) -> PendingRequest:
    return PendingRequest(
        request_id=request.request_id, tier_rank=request.tier_rank, tenant=request.tenant,
        model=request.model, prompt_chars=request.prompt_chars, max_tokens=request.max_tokens,
        arrival_seq=request.arrival_seq,
    )


def workers_from_proto(workers: Sequence[pb.WorkerSlots],
                       view: pb.ResourceView | None) -> list[WorkerSlots]:
    kv_blocks_free = {} if view is None else {
        worker.worker_id: max(0, worker.kv_blocks_total - worker.kv_blocks_used)
        for worker in view.workers
    }
    return [
        WorkerSlots(worker_id=worker.worker_id, models=tuple(worker.models),
                    num_running=worker.num_running, max_num_seqs=worker.max_num_seqs,
                    kv_blocks_free=kv_blocks_free.get(worker.worker_id))
        for worker in workers
    ]
