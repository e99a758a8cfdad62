"""`fair`: weighted fair share of generated tokens across tenants, within each tier.

A virtual token counter per (tier, tenant), as in VTC ("Fairness in Serving
Large Language Models", Sheng et al., OSDI '24): every token a tenant's
requests generate adds 1 / weight to its counter, and the tenant with the
smallest counter goes next. Tiers stay strict: a lower tier is served only
after every request of a higher one that fits.

A placement charges the request's expected tokens (`max_tokens`) at once, and
the account is settled when it ends: the tokens it made beyond the charge are
added, the ones it did not make are given back. Charging only tokens already
made would lag: a tenant behind gets every freed slot until the tokens of the
requests just placed show up, then none, and the running mix (so the share,
second by second) swings far around the weights.

This policy keeps state across calls (it lives in the scheduler process, or in
the broker while the scheduler is down): the counters, and how many tokens of
each request it charged. Tokens come from `running[*].generated_tokens`,
`leaving[*].generated_tokens` and a re-queued request's `generated_tokens`. A
request gone from every list finished, and the tokens it made after its last
report are estimated (see `charge_generated_tokens`). Requests leaving with the
step in flight (on their last token, or told to preempt) are in `leaving`, so a
finishing request is settled from its next-to-last token. Settled from a count
one or more asks old, it was refunded tokens it made; with every request of one
length, those refunds could fall on one tenant's requests for a whole run
(27.5% / 72.5% against 25 / 75 in one bench run). A tenant that comes back after
idling starts at the smallest counter of its tier's active tenants: idle time
banks no credit.

Within a tier it never preempts: shares even out as requests end. Across tiers
it preempts as `priority` does, so a higher tier's request that fits nowhere
takes the slot of the lowest-tier, most recently started one (whose tenant was
charged at its placement, and is not charged again when it resumes).
"""

from __future__ import annotations

import heapq
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from scheduler_svc.data import (
    KernelView,
    PendingRequest,
    PolicyDecision,
    RunningRequest,
    WorkerSlots,
    expected_tokens,
)
from scheduler_svc.placement import Placer
from scheduler_svc.policy_base import (
    PickVictim,
    PolicyName,
    PolicyOptions,
    SchedulingPolicy,
    place_or_preempt,
)
from scheduler_svc.policy_priority import lower_tier_victims, tier_reason

DEFAULT_WEIGHT = 1.0
# Counters of tenants with nothing live kept at most: tenant names come from clients, so
# without a bound a stream of new names grows this policy without end. Beyond it the idle
# counters lowest in their tier go first: a tenant back from idling is lifted to its
# tier's floor anyway, so a low counter is the least to lose.
MAX_IDLE_COUNTERS = 1024

_Key = tuple[int, str]  # (tier rank, tenant)


@dataclass
class _Tracked:
    """One request's account: the tokens it made as last seen, and those charged for it."""

    key: _Key
    max_tokens: int
    tokens_seen: int = 0
    tokens_charged: int = 0  # to its tenant's counter: its expected tokens once placed
    last_stretch: int = 0  # tokens it made between its last two reports
    is_started: bool = False  # placed here, or seen with tokens

    def unseen_tail(self) -> int:
        tokens_left = max(0, self.max_tokens - self.tokens_seen)
        return min(tokens_left, self.last_stretch) if self.last_stretch else tokens_left

    def final_tokens(self) -> int:
        """What it made in all, once it left the lists: its unseen tail estimated."""
        return self.tokens_seen + (self.unseen_tail() if self.is_started else 0)


def parse_tenant_weights(text: str) -> dict[str, float]:
    """ "tenant-a=1,tenant-b=3" -> {"tenant-a": 1.0, "tenant-b": 3.0}; "" -> {}."""
    weights: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        tenant, equals, weight = item.partition("=")
        try:
            value = float(weight)
        except ValueError:
            value = 0.0
        if not equals or not tenant.strip() or not value > 0 or value == float("inf"):
            raise ValueError(
                f"bad tenant weight {item!r}: expected TENANT=WEIGHT with a "
                f"positive WEIGHT, as in 'tenant-a=1,tenant-b=3'"
            )
        weights[tenant.strip()] = value
    return weights


class FairPolicy(SchedulingPolicy):
    name = PolicyName.FAIR
    is_stateless = False  # its counters charge each placement

    def __init__(self, options: PolicyOptions | None = None) -> None:
        super().__init__(options)
        self.weights = parse_tenant_weights(self.options.tenant_weights)
        self.virtual_tokens: dict[_Key, float] = {}
        self._tracked: dict[str, _Tracked] = {}  # request id -> what was charged for it
        self._active: set[_Key] = set()

    def weight(self, tenant: str) -> float:
        return self.weights.get(tenant, DEFAULT_WEIGHT)

    def schedule(
        self,
        pending: Sequence[PendingRequest],
        running: Sequence[RunningRequest],
        workers: Sequence[WorkerSlots],
        view: KernelView | None = None,
        leaving: Sequence[RunningRequest] = (),
    ) -> PolicyDecision:
        holding = [*running, *leaving]  # every request in a slot, whatever it does next
        self.charge_generated_tokens(pending, holding)
        requests: list[PendingRequest | RunningRequest] = [*pending, *holding]
        self.lift_returning_tenants({(r.tier_rank, r.tenant) for r in requests})
        placer = Placer(workers, view)
        pick_victim = lower_tier_victims(running, workers)
        decision = PolicyDecision()
        by_tier: dict[int, list[PendingRequest]] = defaultdict(list)
        for request in pending:
            by_tier[request.tier_rank].append(request)
        lowest_running_rank = max((r.tier_rank for r in running), default=-1)
        for tier_rank in sorted(by_tier):
            may_preempt = tier_rank < lowest_running_rank
            if placer.num_free_slots == 0 and not may_preempt:
                break
            self._place_tier(
                tier_rank, by_tier[tier_rank], placer, pick_victim if may_preempt else None, decision
            )
        return decision

    def charge_generated_tokens(
        self, pending: Iterable[PendingRequest], running: Iterable[RunningRequest]
    ) -> None:
        """Charge each tenant's counter the tokens made beyond what was charged, and
        settle the account of each request that ended.

        A request that left both lists finished (or was cancelled) after its last
        report; its unseen last stretch is estimated as its last observed stretch,
        capped by what it had left, or all it had left when it was never seen running."""
        listed: dict[str, _Tracked] = {}
        requests: list[PendingRequest | RunningRequest] = [*pending, *running]
        for request in requests:
            tracked = self._tracked.pop(request.request_id, None) or _Tracked(
                (request.tier_rank, request.tenant), max_tokens=expected_tokens(request.max_tokens)
            )
            new_tokens = request.generated_tokens - tracked.tokens_seen
            if new_tokens > 0:
                tracked.tokens_seen = request.generated_tokens
                tracked.last_stretch = new_tokens
                tracked.is_started = True
                self._charge_up_to(tracked, tracked.tokens_seen)
            listed[request.request_id] = tracked
        for tracked in self._tracked.values():  # ended: settle
            self._charge(tracked.key, tracked.final_tokens() - tracked.tokens_charged)
        self._tracked = listed

    def _charge_up_to(self, tracked: _Tracked, num_tokens: int) -> None:
        """Charge a request's tenant until `num_tokens` of its tokens are charged."""
        if num_tokens > tracked.tokens_charged:
            self._charge(tracked.key, num_tokens - tracked.tokens_charged)
            tracked.tokens_charged = num_tokens

    def _charge(self, key: _Key, num_tokens: int) -> None:
        """Add `num_tokens` (fewer than 0: give them back) weighted to the key's counter."""
        self.virtual_tokens[key] = self.virtual_tokens.get(key, 0.0) + num_tokens / self.weight(key[1])

    def lift_returning_tenants(self, active: set[_Key]) -> None:
        """A tenant idle until now starts no lower than its tier's least-served active tenant."""
        staying = active & self._active
        floors: dict[int, float] = {}
        for tier_rank, tenant in staying:
            counter = self.virtual_tokens.get((tier_rank, tenant), 0.0)
            floors[tier_rank] = min(floors.get(tier_rank, counter), counter)
        for key in active - self._active:
            floor = floors.get(key[0])
            if floor is not None:
                self.virtual_tokens[key] = max(self.virtual_tokens.get(key, 0.0), floor)
        self._active = active
        self.forget_idle_counters()

    def forget_idle_counters(self) -> None:
        """Keep at most MAX_IDLE_COUNTERS counters of tenants with nothing live."""
        num_idle = len(self.virtual_tokens) - len(self._active)
        if num_idle <= MAX_IDLE_COUNTERS:
            return
        idle = [key for key in self.virtual_tokens if key not in self._active]
        idle.sort(key=lambda key: self.virtual_tokens[key])
        for key in idle[: len(idle) - MAX_IDLE_COUNTERS]:
            del self.virtual_tokens[key]

    def _place_tier(
        self,
        tier_rank: int,
        requests: list[PendingRequest],
        placer: Placer,
        pick_victim: PickVictim | None,
        decision: PolicyDecision,
    ) -> None:
        """Serve the tier's tenants by weight: always the one with the smallest counter.
        With `pick_victim` (lower tiers run), one that fits nowhere may take their slot."""
        queues: dict[str, deque[PendingRequest]] = defaultdict(deque)
        for request in sorted(requests, key=lambda r: (r.deadline_key, r.arrival_seq)):
            queues[request.tenant].append(request)
        # (counter, tenant): each placement charges its expected tokens at once
        turns = [(self.virtual_tokens.get((tier_rank, tenant), 0.0), tenant) for tenant in queues]
        heapq.heapify(turns)
        while turns:
            _, tenant = heapq.heappop(turns)
            queue = queues[tenant]
            request = queue.popleft()
            if place_or_preempt(request, placer, decision, pick_victim, tier_reason) is not None:
                tracked = self._tracked[request.request_id]
                tracked.is_started = True
                self._charge_up_to(tracked, tracked.max_tokens)
            elif placer.num_free_slots == 0 and pick_victim is None:
                return  # nothing more fits, and no lower tier runs
            if queue:
                heapq.heappush(turns, (self.virtual_tokens.get((tier_rank, tenant), 0.0), tenant))
