"""mlfq: skip-join levels, demotion, the max_tokens bound, aging, and preemption: any lower
tier, or within a tier a request past its quantum, two levels down, that has run a while, or
one with many times more tokens left (by max_tokens) than the waiting request."""

from __future__ import annotations

import pytest
from policy_helpers import make_request, make_running, make_worker, placed, placed_ids, preempted, schedule

from scheduler_svc.policies import make_policy
from scheduler_svc.policy_mlfq import MIN_RUN_S, SRPT_MIN_RUN_TOKENS, SRPT_PREEMPT_RATIO

# with the defaults: quanta 16, 32, 64, 128, 256, 512 generated tokens; 8 prompt tokens
# cost one generated token; 4 prompt characters make a token
MLFQ = make_policy("mlfq")
AGING_S = MLFQ.options.mlfq_aging_s


@pytest.mark.parametrize(
    "prompt_tokens, level",
    [
        (0, 0),
        (128, 0),  # cost 16: fits level 0's quantum
        (129, 1),
        (256, 1),  # cost up to 32
        (1000, 3),  # cost 125: level 3's 128
        (100_000, 5),  # longer than any quantum: the last level
    ],
)
def test_skip_join_enters_the_level_the_prompt_length_suggests(prompt_tokens: int, level: int) -> None:
    assert MLFQ.entry_level(prompt_chars=prompt_tokens * 4) == level


@pytest.mark.parametrize(
    "generated_tokens, level", [(0, 0), (15, 0), (16, 1), (47, 1), (48, 2), (16 + 32 + 64, 3), (10**6, 5)]
)
def test_a_request_drops_a_level_each_time_it_uses_up_its_quantum(generated_tokens: int, level: int) -> None:
    assert MLFQ.level(prompt_chars=40, generated_tokens=generated_tokens) == level


def test_a_long_prompt_that_skip_joined_is_demoted_by_its_own_level_quantum() -> None:
    long_prompt = 1000 * 4  # joins level 3 (quantum 128)
    assert MLFQ.level(long_prompt, generated_tokens=127) == 3
    assert MLFQ.level(long_prompt, generated_tokens=128) == 4


def test_short_prompts_and_fresh_requests_go_first() -> None:
    pending = [
        make_request("long-prompt", arrival_seq=0, prompt_chars=4000),
        make_request("demoted", arrival_seq=1, prompt_chars=40, generated_tokens=48),
        make_request("fresh", arrival_seq=2, prompt_chars=40),
    ]
    decision = schedule(MLFQ, pending, [make_worker("w1")])
    assert placed_ids(decision) == ["fresh", "demoted", "long-prompt"]  # levels 0, 2, 3


def test_waiting_promotes_one_level_per_aging_period_so_nothing_starves() -> None:
    starving = make_request("starving", arrival_seq=0, prompt_chars=4000, waited_s=3 * AGING_S)
    assert MLFQ.pending_level(starving) == 0  # level 3, three periods waited
    pending = [make_request("fresh", arrival_seq=1, prompt_chars=40), starving]
    decision = schedule(MLFQ, pending, [make_worker("w1", max_num_seqs=1)])
    assert placed_ids(decision) == ["starving"]  # same level, and it came first


def test_tiers_come_before_levels() -> None:
    pending = [
        make_request("batch-short", tier_rank=1, arrival_seq=0),
        make_request("inter-demoted", tier_rank=0, arrival_seq=1, generated_tokens=10**6),
    ]
    assert placed_ids(schedule(MLFQ, pending, [make_worker("w1")])) == ["inter-demoted", "batch-short"]


def test_deadlines_break_ties_within_a_level() -> None:
    pending = [
        make_request("later", arrival_seq=0, deadline_in_s=5.0),
        make_request("sooner", arrival_seq=1, deadline_in_s=1.0),
    ]
    assert placed_ids(schedule(MLFQ, pending, [make_worker("w1")])) == ["sooner", "later"]


@pytest.mark.parametrize(
    "generated_tokens, max_tokens, level",
    [
        (48, 0, 2),  # no bound: the level its quanta say
        (48, 1000, 2),  # a far bound changes nothing
        (48, 100, 2),  # 52 left: level 2's quantum covers them
        (48, 80, 1),  # 32 left
        (48, 60, 0),  # 12 left: as sure to be short as a fresh request
    ],
)
def test_a_request_never_sits_below_the_level_covering_the_tokens_it_may_still_make(
    generated_tokens: int, max_tokens: int, level: int
) -> None:
    assert MLFQ.level(prompt_chars=40, generated_tokens=generated_tokens, max_tokens=max_tokens) == level


def test_a_long_prompt_with_a_short_answer_bound_joins_the_first_level() -> None:
    assert MLFQ.level(prompt_chars=1000 * 4, generated_tokens=0) == 3
    assert MLFQ.level(prompt_chars=1000 * 4, generated_tokens=0, max_tokens=16) == 0


@pytest.mark.parametrize(
    "answer_fill, level",
    [
        (0.0, 0),  # unknown: the prompt decides
        (0.5, 0),  # answers stop well before their bound: it says little about length
        (0.9, 4),  # answers fill their bound: 256 tokens need level 4's quantum
        (1.0, 4),
    ],
)
def test_where_answers_fill_their_bound_a_request_joins_the_level_its_max_tokens_needs(
    answer_fill: float, level: int
) -> None:
    assert MLFQ.entry_level(prompt_chars=40, max_tokens=256, answer_fill=answer_fill) == level
    assert MLFQ.level(prompt_chars=40, generated_tokens=0, max_tokens=256, answer_fill=answer_fill) == level


def test_joined_by_its_bound_a_request_climbs_as_its_tokens_left_shrink() -> None:
    """Never demoted (its quantum covers its bound), it sits at the level covering the
    tokens it has left: shortest remaining first, in levels."""
    assert [
        MLFQ.level(prompt_chars=40, generated_tokens=generated, max_tokens=256, answer_fill=1.0)
        for generated in (0, 100, 200, 250)
    ] == [4, 4, 2, 0]


def test_where_answers_fill_their_bound_a_fresh_long_request_waits_behind_a_nearly_done_one() -> None:
    pending = [
        make_request("fresh-long", arrival_seq=1, prompt_chars=40, max_tokens=256),
        make_request("nearly-done", arrival_seq=0, prompt_chars=40, max_tokens=256, generated_tokens=230),
    ]
    loose = schedule(MLFQ, pending, [make_worker("w1", max_num_seqs=1)])
    assert placed_ids(loose) == ["fresh-long"]  # level 0 (first quantum) before level 1 (26 left)
    for request in pending:
        request.answer_fill = 1.0
    tight = schedule(MLFQ, pending, [make_worker("w1", max_num_seqs=1)])
    assert placed_ids(tight) == ["nearly-done"]  # level 1 before level 4


def test_within_a_level_fewest_tokens_left_go_first() -> None:
    pending = [
        make_request("long-answer", arrival_seq=0, max_tokens=200),
        make_request("no-bound", arrival_seq=1),
        make_request("short-answer", arrival_seq=2, max_tokens=12),
    ]
    assert placed_ids(schedule(MLFQ, pending, [make_worker("w1")])) == [
        "short-answer",
        "long-answer",
        "no-bound",
    ]


def test_waiting_halves_the_tokens_left_that_order_a_level_so_nothing_starves() -> None:
    """Else a large max_tokens could be passed over forever at level 0."""

    def first(waited_s: float) -> str:
        pending = [
            make_request("fresh-short", arrival_seq=1, max_tokens=8),
            make_request("waited-long", arrival_seq=0, max_tokens=200, waited_s=waited_s),
        ]
        return placed_ids(schedule(MLFQ, pending, [make_worker("w1", max_num_seqs=1)]))[0]

    assert first(waited_s=4 * AGING_S) == "fresh-short"  # 200 / 16 = 12.5 > 8
    assert first(waited_s=5 * AGING_S) == "waited-long"  # 200 / 32 = 6.25 < 8


# ---------------------------------------------------------------- preemption


def full(worker_id: str):
    return make_worker(worker_id, num_running=1, max_num_seqs=1)


def test_a_waiting_request_preempts_one_that_used_up_its_quantum() -> None:
    running = [
        make_running("in-first-quantum", "w1", prompt_chars=40, generated_tokens=10),
        make_running("past-quantum", "w2", prompt_chars=40, generated_tokens=40, running_s=3.0),
        make_running("far-past", "w3", prompt_chars=40, generated_tokens=200, running_s=9.0),
    ]
    decision = schedule(
        MLFQ, [make_request("new", prompt_chars=40)], [full("w1"), full("w2"), full("w3")], running
    )
    assert preempted(decision) == [("far-past", "w3")]  # the lowest level (3) goes first
    assert "level" in decision.preemptions[0].reason
    assert placed(decision) == [("new", "w3")]


def test_no_preemption_of_a_request_still_in_its_first_quantum() -> None:
    # a long prompt skip-joins level 3: a low level, but it has not used a quantum yet
    running = [make_running("long-prompt", "w1", prompt_chars=4000, generated_tokens=100)]
    decision = schedule(MLFQ, [make_request("new", prompt_chars=40)], [full("w1")], running)
    assert decision.preemptions == [] and decision.placements == []


@pytest.mark.parametrize("generated_tokens", [20, 47])  # level 1: one level below the waiter
def test_no_preemption_within_a_tier_of_a_request_less_than_two_levels_down(generated_tokens: int) -> None:
    """One level apart, the two would trade places again at the next demotion."""
    running = [
        make_running("demoted", "w1", prompt_chars=40, generated_tokens=generated_tokens, running_s=9.0)
    ]
    decision = schedule(MLFQ, [make_request("new", prompt_chars=40)], [full("w1")], running)
    assert decision.preemptions == [] and decision.placements == []


def test_no_preemption_within_a_tier_of_a_request_that_only_just_resumed() -> None:
    running = [make_running("resumed", "w1", prompt_chars=40, generated_tokens=200, running_s=MIN_RUN_S / 2)]
    decision = schedule(MLFQ, [make_request("new", prompt_chars=40)], [full("w1")], running)
    assert decision.preemptions == [] and decision.placements == []


def test_no_preemption_of_a_request_about_to_finish() -> None:
    # 200 tokens made, 10 left: the bound puts it at level 0, no lower than the waiter
    running = [
        make_running(
            "nearly-done", "w1", prompt_chars=40, generated_tokens=200, max_tokens=210, running_s=9.0
        )
    ]
    decision = schedule(MLFQ, [make_request("new", prompt_chars=40)], [full("w1")], running)
    assert decision.preemptions == [] and decision.placements == []


def test_no_preemption_of_a_higher_tier() -> None:
    running = [make_running("inter-demoted", "w1", tier_rank=0, generated_tokens=10**4, running_s=9.0)]
    decision = schedule(MLFQ, [make_request("batch-new", tier_rank=1)], [full("w1")], running)
    assert decision.preemptions == [] and decision.placements == []


def test_a_higher_tier_preempts_any_lower_tier_request_as_priority_does() -> None:
    # just started, in its first quantum: within its tier it would be safe
    running = [make_running("batch-fresh", "w1", tier_rank=2, generated_tokens=1)]
    decision = schedule(MLFQ, [make_request("inter-new", tier_rank=0)], [full("w1")], running)
    assert preempted(decision) == [("batch-fresh", "w1")]
    assert placed(decision) == [("inter-new", "w1")]


def test_a_surely_short_request_preempts_one_with_many_times_more_tokens_left() -> None:
    """Shortest remaining first where max_tokens makes the difference sure: even in its first
    quantum, a request that may make 490 more tokens yields to one that makes at most 20."""
    running = [
        make_running(
            "long",
            "w1",
            prompt_chars=40,
            generated_tokens=10,
            max_tokens=500,
            running_s=0.01,
            tokens_since_dispatch=SRPT_MIN_RUN_TOKENS,
        ),
        make_running(
            "shorter",
            "w2",
            prompt_chars=40,
            generated_tokens=10,
            max_tokens=10 + 20 * SRPT_PREEMPT_RATIO - 1,
            running_s=9.0,
        ),
    ]
    decision = schedule(
        MLFQ, [make_request("short", prompt_chars=40, max_tokens=20)], [full("w1"), full("w2")], running
    )
    assert preempted(decision) == [("long", "w1")]
    assert placed(decision) == [("short", "w1")]


def test_no_shortest_first_preemption_of_a_request_before_its_dispatch_made_a_token() -> None:
    """Every dispatch makes progress, so a request preempted whenever it resumes still finishes."""
    running = [
        make_running(
            "long",
            "w1",
            prompt_chars=40,
            generated_tokens=30,
            max_tokens=500,
            running_s=9.0,
            tokens_since_dispatch=SRPT_MIN_RUN_TOKENS - 1,
        )
    ]
    decision = schedule(MLFQ, [make_request("short", prompt_chars=40, max_tokens=20)], [full("w1")], running)
    assert decision.preemptions == [] and decision.placements == []


def test_one_victim_per_waiting_request() -> None:
    running = [
        make_running(f"old-{i}", f"w{i}", generated_tokens=100, running_s=MIN_RUN_S + i) for i in range(3)
    ]
    pending = [make_request(f"new-{i}", arrival_seq=i) for i in range(2)]
    decision = schedule(MLFQ, pending, [full(f"w{i}") for i in range(3)], running)
    # same level: the one that has run longest since its dispatch goes first
    assert preempted(decision) == [("old-2", "w2"), ("old-1", "w1")]
    assert placed(decision) == [("new-0", "w2"), ("new-1", "w1")]


def test_a_long_request_is_placed_while_short_ones_keep_arriving() -> None:
    """One slot, a new short request every second, each done in a second: without
    aging the long-prompt request at level 3 would wait forever."""
    long_request = make_request("long", arrival_seq=0, prompt_chars=4000)
    for second in range(1, 30):
        short = make_request(f"short-{second}", arrival_seq=second, prompt_chars=40)
        waiting = make_request("long", arrival_seq=0, prompt_chars=4000, waited_s=float(second))
        decision = schedule(MLFQ, [short, waiting], [make_worker("w1", max_num_seqs=1)])
        if placed_ids(decision) == ["long"]:
            break
    assert second == 3 * AGING_S  # three levels up, then first in line by arrival
    assert MLFQ.pending_level(long_request) == 3
