"""`mlfq`: a skip-join multi-level feedback queue in the style of FastServe, within each tier.

Level L has a quantum of `base_quantum * 2**L` generated tokens (16, 32, 64, ...;
the last level has no end). A request joins the first level whose quantum
covers its prompt's cost (skip-join: a long prefill would only be demoted at
once) or, where its tier's answers run to their `max_tokens` (the broker's
answer fill at least `BOUND_TRUSTED_FILL`), the first whose quantum covers its
`max_tokens`: it would as surely be demoted from every level above. It then
drops one level each time it uses up its level's quantum, and while it
waits climbs one level per `aging_s` seconds, so nothing starves. A request
never sits below the level whose quantum covers the tokens it may still make
(`max_tokens` less those generated): that bound is sure, so a request about to
finish is not pushed behind fresh ones it would have finished before.

The policy keeps no state: a request's level follows from its prompt length,
its generated tokens, its `max_tokens`, its tier's answer fill and how long it
waited, all of which the broker reports. Where bounds are tight, the levels
order requests by tokens left, as shortest-remaining-first would; where they
are loose (answers stop at EOS well before `max_tokens`), every request joins
by its prompt and the feedback levels find the long ones.

Order: tier, then level, then earliest deadline, then fewest tokens left by
`max_tokens`, then arrival. A small `max_tokens` makes a request surely short;
the count of a waiting request halves per `aging_s`, as its level climbs, so
one with a large bound is passed over only for a while. A request that
fits nowhere preempts a running request of a lower tier (any, as `priority`
does), or of its own tier one that has used up a quantum, now sits at least
`PREEMPT_LEVEL_GAP` levels below the waiting request and has run at least
`MIN_RUN_S` since its last dispatch, or one that may still make at least
`SRPT_PREEMPT_RATIO` times the tokens the waiting request may (by `max_tokens`)
and has made a token since its last dispatch: shortest remaining first where
the bound makes the difference sure (lowest tier, lowest level, most tokens
left, longest running first). A preempted request's computed tokens stay in
its worker's prefix cache, so a resume there costs little; but a request
preempted whenever it resumes would never finish: every dispatch makes at
least one token, and the gap and the minimum run keep the churn down.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TypeVar

from scheduler_svc.data import (
    KernelView,
    PendingRequest,
    PolicyDecision,
    RunningRequest,
    WorkerSlots,
    prompt_tokens,
)
from scheduler_svc.placement import Placer
from scheduler_svc.policy_base import PolicyName, SchedulingPolicy, Victims, place_in_order

# A prefill processes its prompt in parallel: about this many prompt tokens cost
# as much engine time as one generated token (FastServe sizes the join level by
# the first iteration's time).
PROMPT_TOKENS_PER_GENERATED_TOKEN = 8
# A tier whose recent answers made at least this share of their max_tokens on
# average has bounds tight enough to join by.
BOUND_TRUSTED_FILL = 0.9
# Within a tier, a waiting request preempts only a request this many levels below
# it: one level apart, the two would trade places again at the next demotion.
PREEMPT_LEVEL_GAP = 2
# Within a tier, a request resumed (or started) this recently is not preempted:
# it keeps its slot long enough to make progress worth its re-prefill.
MIN_RUN_S = 1.0
# Within a tier, a waiting request also preempts one whose tokens left (by max_tokens)
# are at least this many times its own, once that one has made SRPT_MIN_RUN_TOKENS
# since its dispatch: shortest-remaining-first, where the bound makes the difference
# sure. The token is the progress every dispatch must make, not a wait in seconds:
# without it, a request preempted before it joined a step could be dispatched
# again and again for nothing.
SRPT_PREEMPT_RATIO = 4
SRPT_MIN_RUN_TOKENS = 1

T = TypeVar("T")


def has_progressed(request: RunningRequest) -> bool:
    """Has this dispatch made the progress shortest-remaining-first preemption waits for?"""
    return request.tokens_since_dispatch >= SRPT_MIN_RUN_TOKENS


class MlfqPolicy(SchedulingPolicy):
    name = PolicyName.MLFQ

    @property
    def last_level(self) -> int:
        return self.options.mlfq_num_levels - 1

    def quantum(self, level: int) -> int:
        """Generated tokens a request may use at `level` before it drops a level."""
        return self.options.mlfq_base_quantum << level

    def covering_level(self, num_tokens: int) -> int:
        """The first level whose quantum covers `num_tokens` generated tokens."""
        num_base_quanta = -(-num_tokens // self.options.mlfq_base_quantum)  # rounded up
        # the first L with 2**L >= num_base_quanta (bit arithmetic: thousands per batch)
        return min(max(0, num_base_quanta - 1).bit_length(), self.last_level)

    def entry_level(self, prompt_chars: int, max_tokens: int = 0, answer_fill: float = 0.0) -> int:
        """Skip-join: the first level whose quantum covers the prompt's cost, or its
        `max_tokens` where its tier's answers fill their bound."""
        cost = -(-prompt_tokens(prompt_chars) // PROMPT_TOKENS_PER_GENERATED_TOKEN)
        if max_tokens > 0 and answer_fill >= BOUND_TRUSTED_FILL:
            cost = max(cost, max_tokens)
        return self.covering_level(cost)

    def level(
        self, prompt_chars: int, generated_tokens: int, max_tokens: int = 0, answer_fill: float = 0.0
    ) -> int:
        """The entry level, one lower for each quantum used up since (after k levels
        from level e a request has used quantum(e) * (2**k - 1) tokens), but never
        below the level that covers the tokens it may still make."""
        entry = self.entry_level(prompt_chars, max_tokens, answer_fill)
        levels_down = (generated_tokens // self.quantum(entry) + 1).bit_length() - 1
        attained = min(entry + levels_down, self.last_level)
        if attained == 0 or max_tokens <= 0:  # no bound: the broker always sets one
            return attained
        return min(attained, self.covering_level(max(0, max_tokens - generated_tokens)))

    def pending_level(self, request: PendingRequest) -> int:
        """A waiting request's level, aged: one level up per `mlfq_aging_s` waited."""
        levels_up = int(request.waited_s // self.options.mlfq_aging_s)
        level = self.level(
            request.prompt_chars, request.generated_tokens, request.max_tokens, request.answer_fill
        )
        return max(0, level - levels_up)

    def fewest_tokens_left_key(self, request: PendingRequest) -> float:
        """Within a level, fewest tokens left (by `max_tokens`) first, aged as levels
        are: the count halves per `mlfq_aging_s` waited, so a large `max_tokens` is
        never passed over forever. No bound (the broker always sets one): last."""
        if request.max_tokens <= 0:
            return math.inf
        return (request.max_tokens - request.generated_tokens) * 0.5 ** (
            request.waited_s / self.options.mlfq_aging_s
        )

    def running_level(self, request: RunningRequest) -> int:
        return self.level(
            request.prompt_chars, request.generated_tokens, request.max_tokens, request.answer_fill
        )

    def has_used_a_quantum(self, request: RunningRequest, level: int) -> bool:
        """Has it run long enough, and dropped below its entry level (`level` is its
        running level)? Only such a request of the same tier may be preempted for a
        higher level (a lower tier always may)."""
        return request.running_s >= MIN_RUN_S and level > self.entry_level(
            request.prompt_chars, request.max_tokens, request.answer_fill
        )

    def schedule(
        self,
        pending: Sequence[PendingRequest],
        running: Sequence[RunningRequest],
        workers: Sequence[WorkerSlots],
        view: KernelView | None = None,
        leaving: Sequence[RunningRequest] = (),
    ) -> PolicyDecision:
        pending_levels = {request.request_id: self.pending_level(request) for request in pending}
        ordered = sorted(
            pending,
            key=lambda request: (
                request.tier_rank,
                pending_levels[request.request_id],
                request.deadline_key,
                self.fewest_tokens_left_key(request),
                request.arrival_seq,
            ),
        )
        # running requests are looked at only when a preemption is considered
        running_level = once_per_request(self.running_level)
        has_used_a_quantum = once_per_request(lambda r: self.has_used_a_quantum(r, running_level(r)))

        def may_preempt(request: RunningRequest) -> bool:
            """Could anything preempt it?"""
            return (
                has_used_a_quantum(request)
                or request.tier_rank > 0  # the top tier is never a lower tier
                or (has_progressed(request) and tokens_left(request) > 0)
            )

        victims = Victims(
            running,
            workers,
            order=lambda r: (-r.tier_rank, -running_level(r), -tokens_left(r), -r.running_s, -r.arrival_seq),
            may_preempt=may_preempt,
        )

        def pick_victim(request: PendingRequest, placer: Placer) -> RunningRequest | None:
            level = pending_levels[request.request_id]
            tier_rank = request.tier_rank

            def is_eligible(victim: RunningRequest) -> bool:
                return (
                    victim.tier_rank > tier_rank
                    or (has_used_a_quantum(victim) and running_level(victim) >= level + PREEMPT_LEVEL_GAP)
                    or (
                        has_progressed(victim)
                        and request.max_tokens > 0
                        and tokens_left(victim)
                        >= SRPT_PREEMPT_RATIO * max(1, request.max_tokens - request.generated_tokens)
                    )
                )

            return victims.pick(
                request,
                placer,
                no_victim_key=(request.model, tier_rank, level),
                is_eligible=is_eligible,
                stop=lambda victim: victim.tier_rank < tier_rank,
            )

        def reason(request: PendingRequest, victim: RunningRequest) -> str:
            return (
                f"mlfq: {request.request_id} (tier rank {request.tier_rank}) waits at level "
                f"{pending_levels[request.request_id]}; {victim.request_id} (tier rank "
                f"{victim.tier_rank}) is at level {running_level(victim)}"
            )

        return place_in_order(ordered, Placer(workers, view), pick_victim, reason)


def once_per_request(compute: Callable[[RunningRequest], T]) -> Callable[[RunningRequest], T]:
    """`compute`, a pure function of a request, evaluated at most once per request id."""
    cache: dict[str, T] = {}

    def get(request: RunningRequest) -> T:
        if request.request_id not in cache:
            cache[request.request_id] = compute(request)
        return cache[request.request_id]

    return get


def tokens_left(request: RunningRequest) -> int:
    """The most tokens a running request may still make (0: no bound known)."""
    return max(0, request.max_tokens - request.generated_tokens) if request.max_tokens > 0 else 0
