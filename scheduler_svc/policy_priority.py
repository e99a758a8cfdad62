"""`priority`: strict tiers. Within a tier, earliest deadline first, then arrival.

When a request fits nowhere, it preempts the lowest-tier, most recently started
running request on a worker serving its model (the broker keeps that request's
tokens and resumes it later): at most one victim per waiting request, and never
one of the same or a higher tier.
"""

from __future__ import annotations

from collections.abc import Sequence

from scheduler_svc.data import KernelView, PendingRequest, PolicyDecision, RunningRequest, WorkerSlots
from scheduler_svc.placement import Placer
from scheduler_svc.policy_base import PickVictim, PolicyName, SchedulingPolicy, Victims, place_in_order


def priority_order(request: PendingRequest) -> tuple[int, float, int]:
    return (request.tier_rank, request.deadline_key, request.arrival_seq)


def lower_tier_victims(running: Sequence[RunningRequest], workers: Sequence[WorkerSlots]) -> PickVictim:
    """The victim chooser of strict tiers: for a request that fits nowhere, the
    lowest-tier running request below its tier, the most recently started first
    (it loses the least work); never one of the top tier."""
    victims = Victims(
        running,
        workers,
        order=lambda r: (-r.tier_rank, r.running_s, -r.arrival_seq),
        may_preempt=lambda r: r.tier_rank > 0,
    )

    def pick_victim(request: PendingRequest, placer: Placer) -> RunningRequest | None:
        return victims.pick(
            request,
            placer,
            no_victim_key=(request.model, request.tier_rank),
            stop=lambda victim: victim.tier_rank <= request.tier_rank,
        )

    return pick_victim


class PriorityPolicy(SchedulingPolicy):
    name = PolicyName.PRIORITY

    def schedule(
        self,
        pending: Sequence[PendingRequest],
        running: Sequence[RunningRequest],
        workers: Sequence[WorkerSlots],
        view: KernelView | None = None,
        leaving: Sequence[RunningRequest] = (),
    ) -> PolicyDecision:
        return place_in_order(
            sorted(pending, key=priority_order),
            Placer(workers, view),
            lower_tier_victims(running, workers),
            reason=tier_reason,
        )


def tier_reason(request: PendingRequest, victim: RunningRequest) -> str:
    return (
        f"higher tier: {request.request_id} (tier rank {request.tier_rank}) waits; "
        f"{victim.request_id} has tier rank {victim.tier_rank}"
    )
