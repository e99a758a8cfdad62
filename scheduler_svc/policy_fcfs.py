"""`fcfs`: first come, first served, whatever the tier; the baseline every
benchmark compares against. It never preempts."""

from __future__ import annotations

from collections.abc import Sequence

from scheduler_svc.data import KernelView, PendingRequest, PolicyDecision, RunningRequest, WorkerSlots
from scheduler_svc.placement import Placer
from scheduler_svc.policy_base import PolicyName, SchedulingPolicy, place_in_order


class FcfsPolicy(SchedulingPolicy):
    name = PolicyName.FCFS

    def schedule(
        self,
        pending: Sequence[PendingRequest],
        running: Sequence[RunningRequest],
        workers: Sequence[WorkerSlots],
        view: KernelView | None = None,
        leaving: Sequence[RunningRequest] = (),
    ) -> PolicyDecision:
        ordered = sorted(pending, key=lambda request: request.arrival_seq)
        return place_in_order(ordered, Placer(workers, view))
