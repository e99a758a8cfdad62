"""`mlfq`: a skip-join multi-level feedback queue in the style of FastServe, within each tier.

Level L has a quantum of `base_quantum * 2**L` generated tokens (16, 32, 64, ...;
the last level has no end). A request joins the first level whose quantum
covers its prompt's cost (skip-join: a long prefill would only be demoted at
once), drops one level each time it uses up its level's quantum, and while it
waits climbs one level per `aging_s` seconds, so nothing starves.

The policy keeps no state: a request's level follows from its prompt length,
its generated tokens and how long it waited, all of which the broker reports.

Order: tier, then level, then earliest deadline, then arrival. A request that
fits nowhere preempts a running request of its tier or a lower one that has
used up a quantum and now sits at a lower level than the waiting request
(lowest tier, lowest level, most recently started first).
"""

from __future__ import annotations

from typing import Sequence

from scheduler_svc.data import (KernelView, PendingRequest, PolicyDecision, RunningRequest,
                                WorkerSlots, prompt_tokens)
from scheduler_svc.placement import Placer
from scheduler_svc.policy_base import PolicyName, SchedulingPolicy, Victims, place_in_order

# A prefill processes its prompt in parallel: about this many prompt tokens cost
# as much engine time as one generated token (FastServe sizes the join level by
# the first iteration's time).
PROMPT_TOKENS_PER_GENERATED_TOKEN = 8


class MlfqPolicy(SchedulingPolicy):
    name = PolicyName.MLFQ

    @property
    def last_level(self) -> int:
        return self.options.mlfq_num_levels - 1

    def quantum(self, level: int) -> int:
        """Generated tokens a request may use at `level` before it drops a level."""
        return self.options.mlfq_base_quantum << level

    def entry_level(self, prompt_chars: int) -> int:
        """Skip-join: the first level whose quantum covers the prompt's cost."""
        cost_unit = self.options.mlfq_base_quantum * PROMPT_TOKENS_PER_GENERATED_TOKEN
        num_base_quanta = -(-prompt_tokens(prompt_chars) // cost_unit)  # rounded up
        # the first L with 2**L >= num_base_quanta (bit arithmetic: thousands per batch)
        return min(max(0, num_base_quanta - 1).bit_length(), self.last_level)

    def level(self, prompt_chars: int, generated_tokens: int) -> int:
        """The entry level, one lower for each quantum used up since: after k
        levels from level e a request has used quantum(e) * (2**k - 1) tokens."""
        entry = self.entry_level(prompt_chars)
        levels_down = (generated_tokens // self.quantum(entry) + 1).bit_length() - 1
        return min(entry + levels_down, self.last_level)

    def pending_level(self, request: PendingRequest) -> int:
        """A waiting request's level, aged: one level up per `mlfq_aging_s` waited."""
        levels_up = int(request.waited_s // self.options.mlfq_aging_s)
        return max(0, self.level(request.prompt_chars, request.generated_tokens) - levels_up)

    def running_level(self, request: RunningRequest) -> int:
        return self.level(request.prompt_chars, request.generated_tokens)

    def schedule(self, pending: Sequence[PendingRequest], running: Sequence[RunningRequest],
                 workers: Sequence[WorkerSlots], view: KernelView | None = None) -> PolicyDecision:
        pending_levels = {request.request_id: self.pending_level(request) for request in pending}
        ordered = sorted(pending, key=lambda r: (r.tier_rank, pending_levels[r.request_id],
                                                 r.deadline_key, r.arrival_seq))
        running_levels: dict[str, int] = {}

        def has_used_a_quantum(request: RunningRequest) -> bool:
            """The only requests ever preempted (their level is kept for the order)."""
            level = running_levels[request.request_id] = self.running_level(request)
            return level > self.entry_level(request.prompt_chars)

        victims = Victims(running, workers,
                          order=lambda r: (-r.tier_rank, -running_levels[r.request_id],
                                           r.running_s, -r.arrival_seq),
                          may_preempt=has_used_a_quantum)

        def pick_victim(request: PendingRequest, placer: Placer) -> RunningRequest | None:
            level = pending_levels[request.request_id]
            return victims.pick(
                request, placer, hopeless_key=(request.model, request.tier_rank, level),
                is_eligible=lambda victim: running_levels[victim.request_id] > level,
                stop=lambda victim: victim.tier_rank < request.tier_rank)

        def reason(request: PendingRequest, victim: RunningRequest) -> str:
            return (f"mlfq: {request.request_id} waits at level {pending_levels[request.request_id]}; "
                    f"{victim.request_id} used its quanta down to level "
                    f"{running_levels[victim.request_id]}")

        return place_in_order(ordered, Placer(workers, view), pick_victim, reason)
