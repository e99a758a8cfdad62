"""mlfq: skip-join levels, demotion, aging, preemption of a request past its quantum."""

from __future__ import annotations

import pytest

from policy_helpers import make_request, make_running, make_worker, placed, placed_ids, preempted, schedule
from scheduler_svc.policies import make_policy

# with the defaults: quanta 16, 32, 64, 128, 256, 512 generated tokens; 8 prompt tokens
# cost one generated token; 4 prompt characters make a token
MLFQ = make_policy("mlfq")
AGING_S = MLFQ.options.mlfq_aging_s


@pytest.mark.parametrize("prompt_tokens, level", [
    (0, 0), (128, 0),        # cost 16: fits level 0's quantum
    (129, 1), (256, 1),      # cost up to 32
    (1000, 3),               # cost 125: level 3's 128
    (100_000, 5),            # longer than any quantum: the last level
])
def test_skip_join_enters_the_level_the_prompt_length_suggests(prompt_tokens: int, level: int) -> None:
    assert MLFQ.entry_level(prompt_chars=prompt_tokens * 4) == level


@pytest.mark.parametrize("generated_tokens, level", [
    (0, 0), (15, 0), (16, 1), (47, 1), (48, 2), (16 + 32 + 64, 3), (10**6, 5)])
def test_a_request_drops_a_level_each_time_it_uses_up_its_quantum(generated_tokens: int,
                                                                     level: int) -> None:
    assert MLFQ.level(prompt_chars=40, generated_tokens=generated_tokens) == level


def test_a_long_prompt_that_skip_joined_is_demoted_by_its_own_level_quantum() -> None:
    long_prompt = 1000 * 4  # joins level 3 (quantum 128)
    assert MLFQ.level(long_prompt, generated_tokens=127) == 3
    assert MLFQ.level(long_prompt, generated_tokens=128) == 4


def test_short_prompts_and_fresh_requests_go_first() -> None:
    pending = [make_request("long-prompt", arrival_seq=0, prompt_chars=4000),
               make_request("demoted", arrival_seq=1, prompt_chars=40, generated_tokens=48),
               make_request("fresh", arrival_seq=2, prompt_chars=40)]
    decision = schedule(MLFQ, pending, [make_worker("w1")])
    assert placed_ids(decision) == ["fresh", "demoted", "long-prompt"]  # levels 0, 2, 3


def test_waiting_promotes_one_level_per_aging_period_so_nothing_starves() -> None:
    starving = make_request("starving", arrival_seq=0, prompt_chars=4000, waited_s=3 * AGING_S)
    assert MLFQ.pending_level(starving) == 0  # level 3, three periods waited
    pending = [make_request("fresh", arrival_seq=1, prompt_chars=40), starving]
    decision = schedule(MLFQ, pending, [make_worker("w1", max_num_seqs=1)])
    assert placed_ids(decision) == ["starving"]  # same level, and it came first


def test_tiers_come_before_levels() -> None:
    pending = [make_request("batch-short", tier_rank=1, arrival_seq=0),
               make_request("inter-demoted", tier_rank=0, arrival_seq=1, generated_tokens=10**6)]
    assert placed_ids(schedule(MLFQ, pending, [make_worker("w1")])) == ["inter-demoted", "batch-short"]


def test_deadlines_break_ties_within_a_level() -> None:
    pending = [make_request("later", arrival_seq=0, deadline_in_s=5.0),
               make_request("sooner", arrival_seq=1, deadline_in_s=1.0)]
    assert placed_ids(schedule(MLFQ, pending, [make_worker("w1")])) == ["sooner", "later"]


# ---------------------------------------------------------------- preemption

def full(worker_id: str):
    return make_worker(worker_id, num_running=1, max_num_seqs=1)


def test_a_waiting_request_preempts_one_that_used_up_its_quantum() -> None:
    running = [make_running("in-first-quantum", "w1", prompt_chars=40, generated_tokens=10),
               make_running("past-quantum", "w2", prompt_chars=40, generated_tokens=40, running_s=3.0),
               make_running("far-past", "w3", prompt_chars=40, generated_tokens=200, running_s=9.0)]
    decision = schedule(MLFQ, [make_request("new", prompt_chars=40)],
                        [full("w1"), full("w2"), full("w3")], running)
    assert preempted(decision) == [("far-past", "w3")]  # the lowest level goes first
    assert "level" in decision.preemptions[0].reason
    assert placed(decision) == [("new", "w3")]


def test_no_preemption_of_a_request_still_in_its_first_quantum() -> None:
    # a long prompt skip-joins level 3: a low level, but it has not used a quantum yet
    running = [make_running("long-prompt", "w1", prompt_chars=4000, generated_tokens=100)]
    decision = schedule(MLFQ, [make_request("new", prompt_chars=40)], [full("w1")], running)
    assert decision.preemptions == [] and decision.placements == []


def test_no_preemption_for_a_waiting_request_of_the_same_or_a_lower_level() -> None:
    running = [make_running("demoted", "w1", prompt_chars=40, generated_tokens=20)]  # level 1
    waiting = make_request("also-demoted", prompt_chars=40, generated_tokens=30)    # level 1
    decision = schedule(MLFQ, [waiting], [full("w1")], running)
    assert decision.preemptions == [] and decision.placements == []


def test_no_preemption_of_a_higher_tier() -> None:
    running = [make_running("inter-demoted", "w1", tier_rank=0, generated_tokens=10**4)]
    decision = schedule(MLFQ, [make_request("batch-new", tier_rank=1)], [full("w1")], running)
    assert decision.preemptions == [] and decision.placements == []


def test_one_victim_per_waiting_request() -> None:
    running = [make_running(f"old-{i}", f"w{i}", generated_tokens=100, running_s=float(i))
               for i in range(3)]
    pending = [make_request(f"new-{i}", arrival_seq=i) for i in range(2)]
    decision = schedule(MLFQ, pending, [full(f"w{i}") for i in range(3)], running)
    assert preempted(decision) == [("old-0", "w0"), ("old-1", "w1")]
    assert placed(decision) == [("new-0", "w0"), ("new-1", "w1")]


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
