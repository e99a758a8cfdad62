"""The policy interface: names, options, the abstract base, and the
loop every policy ends in: place requests in the policy's order, preempting
where the policy names a victim.

Each policy lives in its own module (`policy_<name>.py`); `scheduler_svc.policies`
maps names to classes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

from scheduler_svc.data import (
    KernelView,
    PendingRequest,
    Placement,
    PolicyDecision,
    Preemption,
    RunningRequest,
    WorkerSlots,
)
from scheduler_svc.placement import Placer


class PolicyName(str, Enum):
    FCFS = "fcfs"  # arrival order only, whatever the tier: the baseline
    PRIORITY = "priority"  # strict tiers, EDF then arrival within a tier; preempts lower tiers
    MLFQ = "mlfq"  # skip-join multi-level feedback queue within a tier (FastServe)
    FAIR = "fair"  # weighted fair share of generated tokens across tenants within a tier

    def __str__(self) -> str:  # "fcfs" in logs and status lines, not "PolicyName.FCFS"
        return self.value

    @classmethod
    def parse(cls, name: str) -> PolicyName:
        try:
            return cls(name)
        except ValueError:
            raise ValueError(
                f"unknown scheduling policy {name!r}; choose one of: {', '.join(cls.choices())}"
            ) from None

    @classmethod
    def choices(cls) -> list[str]:
        return [member.value for member in cls]


@dataclass(frozen=True)
class PolicyOptions:
    """Every policy's knobs; a policy reads only its own (SchedulerConfig carries them)."""

    tenant_weights: str = ""  # fair: "tenant-a=1,tenant-b=3"; unknown tenants weigh 1
    mlfq_base_quantum: int = 16  # mlfq: generated tokens at level 0; each level doubles it
    mlfq_num_levels: int = 6
    mlfq_aging_s: float = 5.0  # mlfq: a waiting request climbs one level per this many seconds

    def __post_init__(self) -> None:
        if self.mlfq_base_quantum < 1:
            raise ValueError(f"mlfq_base_quantum must be at least 1, not {self.mlfq_base_quantum}")
        if self.mlfq_num_levels < 1:
            raise ValueError(f"mlfq_num_levels must be at least 1, not {self.mlfq_num_levels}")
        if not self.mlfq_aging_s > 0:
            raise ValueError(f"mlfq_aging_s must be positive, not {self.mlfq_aging_s}")


class SchedulingPolicy(ABC):
    name: ClassVar[PolicyName]
    # True when each decision depends only on the batch asked about: nothing is carried
    # from one ask to the next, so a request placed without asking (the broker's direct
    # placement on an idle worker) leaves every later decision as it would have been.
    # `fair` charges tenants at placement, and is not.
    is_stateless: ClassVar[bool] = True

    def __init__(self, options: PolicyOptions | None = None) -> None:
        self.options = options or PolicyOptions()

    @abstractmethod
    def schedule(
        self,
        pending: Sequence[PendingRequest],
        running: Sequence[RunningRequest],
        workers: Sequence[WorkerSlots],
        view: KernelView | None = None,
        leaving: Sequence[RunningRequest] = (),
    ) -> PolicyDecision:
        """What to preempt and what to place now. `workers` should list every
        worker, full ones too: a victim's worker must be known to preempt it.
        `leaving`: requests that leave at the end of the step in flight (finishing,
        or told to preempt), with their latest tokens; neither slots nor victims."""


# A policy's victim chooser: the running request to stop for a waiting one, or None.
PickVictim = Callable[[PendingRequest, Placer], RunningRequest | None]


Reason = Callable[[PendingRequest, RunningRequest], str]


def place_in_order(
    ordered: Iterable[PendingRequest],
    placer: Placer,
    pick_victim: PickVictim | None = None,
    reason: Reason | None = None,
) -> PolicyDecision:
    """Place each request where placement puts it; one that fits nowhere may
    preempt the victim `pick_victim` names and take its slot. A request that
    still fits nowhere stays pending, and later ones may still fit."""
    decision = PolicyDecision()
    for request in ordered:
        is_placed = place_or_preempt(request, placer, decision, pick_victim, reason) is not None
        if not is_placed and pick_victim is None and placer.num_free_slots == 0:
            break  # nothing left to place anything on
    return decision


def place_or_preempt(
    request: PendingRequest,
    placer: Placer,
    decision: PolicyDecision,
    pick_victim: PickVictim | None = None,
    reason: Reason | None = None,
) -> Placement | None:
    """Place one request where placement puts it or, where it fits nowhere, in the
    slot of the victim `pick_victim` names; both acts go into `decision`. The
    placement, or None when the request stays pending."""
    worker_id = placer.find_worker(request)
    if worker_id is not None:
        placement = placer.place(request, worker_id)
    else:
        victim = pick_victim(request, placer) if pick_victim is not None else None
        if victim is None:
            return None
        why = reason(request, victim) if reason else ""
        decision.preemptions.append(Preemption(victim.request_id, victim.worker_id, why))
        placement = placer.place_instead(victim, request)
    decision.placements.append(placement)
    return placement


class Victims:
    """Running requests in the order a policy would stop them, each stopped at most once.

    `pick` scans for the first eligible one; a scan that finds none is remembered
    under `no_victim_key`, since this batch only ever takes victims away.

    A slot that is already being freed comes first, though: a worker running
    more requests than `running` lists for it is finishing or preempting the
    others (the broker leaves those out). A waiting request counts on such a
    slot, one request per slot, instead of stopping one more request while an
    earlier preemption is still on its way.
    """

    def __init__(
        self,
        running: Iterable[RunningRequest],
        workers: Iterable[WorkerSlots],
        order: Callable[[RunningRequest], tuple],
        may_preempt: Callable[[RunningRequest], bool] | None = None,
    ) -> None:
        self._running = running
        self._workers = workers
        self._order_key = order
        self._may_preempt = may_preempt
        self._sorted: list[RunningRequest] | None = None  # on the first pick: most batches need none
        self._slots_leaving: dict[str, int] = {}
        self._is_taken: set[str] = set()
        self._keys_without_victim: set[tuple] = set()

    @property
    def _order(self) -> list[RunningRequest]:
        if self._sorted is None:
            listed = Counter(r.worker_id for r in self._running)
            self._slots_leaving = {
                w.worker_id: w.num_running - listed[w.worker_id]
                for w in self._workers
                if w.num_running > listed[w.worker_id]
            }
            may_preempt = self._may_preempt
            candidates = [r for r in self._running if may_preempt is None or may_preempt(r)]
            self._sorted = sorted(candidates, key=self._order_key)
        return self._sorted

    def pick(
        self,
        request: PendingRequest,
        placer: Placer,
        no_victim_key: tuple,
        is_eligible: Callable[[RunningRequest], bool] | None = None,
        stop: Callable[[RunningRequest], bool] | None = None,
    ) -> RunningRequest | None:
        if no_victim_key in self._keys_without_victim or len(self._is_taken) == len(self._order):
            return None
        if self._wait_for_a_leaving_slot(request, placer):
            return None
        for victim in self._order:
            if stop is not None and stop(victim):
                break  # the order puts every later victim out of reach too
            if (
                victim.request_id not in self._is_taken
                and (is_eligible is None or is_eligible(victim))
                and placer.can_preempt_for(request, victim)
            ):
                self._is_taken.add(victim.request_id)
                return victim
        self._keys_without_victim.add(no_victim_key)
        return None

    def _wait_for_a_leaving_slot(self, request: PendingRequest, placer: Placer) -> bool:
        for worker_id, num_slots in self._slots_leaving.items():
            if num_slots > 0 and placer.serves(worker_id, request.model):
                self._slots_leaving[worker_id] = num_slots - 1
                return True
        return False
