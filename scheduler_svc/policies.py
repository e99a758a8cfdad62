"""Scheduling policies: the factory and `decide`.

`decide` turns a ScheduleRequest (and the kernel's view, when there is one)
into a ScheduleDecision. The scheduler process calls it for every batch, and
the broker calls the very same function when the scheduler is down, so it
touches no socket and no global state (a policy object may keep its own, like
`fair`'s counters).

Adding a policy: one `policy_<name>.py` with a SchedulingPolicy subclass, one
PolicyName member, one row in _POLICIES.
"""

from __future__ import annotations

import time
from typing import Any

from llmos.wire import pb
from scheduler_svc.convert import (
    Converted,
    answer_fills,
    fill_decision,
    kernel_view_from_proto,
    pending_from_proto,
    running_from_proto,
    workers_from_proto,
)
from scheduler_svc.data import KernelView
from scheduler_svc.policy_base import PolicyName, PolicyOptions, SchedulingPolicy
from scheduler_svc.policy_fair import FairPolicy
from scheduler_svc.policy_fcfs import FcfsPolicy
from scheduler_svc.policy_mlfq import MlfqPolicy
from scheduler_svc.policy_priority import PriorityPolicy

__all__ = [
    "PolicyName",
    "PolicyOptions",
    "SchedulingPolicy",
    "decide",
    "is_stateless_policy",
    "make_policy",
]

_POLICIES: dict[PolicyName, type[SchedulingPolicy]] = {
    PolicyName.FCFS: FcfsPolicy,
    PolicyName.PRIORITY: PriorityPolicy,
    PolicyName.MLFQ: MlfqPolicy,
    PolicyName.FAIR: FairPolicy,
}


def make_policy(name: str, **options: Any) -> SchedulingPolicy:
    """The policy called `name` with PolicyOptions fields as keywords (each policy
    reads its own); ValueError naming the choices when there is no such policy."""
    return _POLICIES[PolicyName.parse(name)](PolicyOptions(**options))


def is_stateless_policy(name: str) -> bool:
    """Does the policy called `name` decide from each batch alone (SchedulingPolicy.is_stateless)?
    False for a name this code does not know (a scheduler newer than the broker)."""
    try:
        return _POLICIES[PolicyName.parse(name)].is_stateless
    except ValueError:
        return False


# ---------------------------------------------------------------- protobuf in, protobuf out

_MAX_DECISION_US = 2**32 - 1  # ScheduleDecision.decision_us is a uint32


def decide(
    policy: SchedulingPolicy, request: pb.ScheduleRequest, view: pb.ResourceView | KernelView | None
) -> pb.ScheduleDecision:
    """Run `policy` on one batch. Free KV blocks and cached prefixes come from the
    kernel's `view` when there is one (the scheduler passes it converted once,
    as a KernelView). The decision lists preemptions, to act on first, then
    placements in dispatch order."""
    started_ns = time.perf_counter_ns()
    kernel_view = kernel_view_from_proto(view) if isinstance(view, pb.ResourceView) else view
    fills = answer_fills(request)
    result = policy.schedule(
        [pending_from_proto(p, fills) for p in request.pending],
        Converted(request.running, lambda running: running_from_proto(running, fills)),
        workers_from_proto(request.workers, kernel_view),
        kernel_view,
        Converted(request.leaving, lambda leaving: running_from_proto(leaving, fills)),
    )
    decision = pb.ScheduleDecision(batch_id=request.batch_id, policy=policy.name.value)
    fill_decision(decision, result)
    elapsed_us = (time.perf_counter_ns() - started_ns) // 1000
    decision.decision_us = min(elapsed_us, _MAX_DECISION_US)
    return decision
