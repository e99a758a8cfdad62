"""The broker's per-tier answer fill: how much of their max_tokens answers use."""

from __future__ import annotations

import pytest

from broker.answers import ANSWERS_AVERAGED, AnswerFills
from llmos.wire import pb


def fills_of(answer_fills: AnswerFills) -> dict[str, tuple[int, float]]:
    return {a.tier: (a.num_answers, round(a.mean_fill, 6)) for a in answer_fills.tier_answers()}


def test_the_first_answers_give_their_exact_mean_per_tier() -> None:
    answer_fills = AnswerFills()
    answer_fills.record("batch", pb.FINISH_REASON_LENGTH, 100, 100)
    answer_fills.record("batch", pb.FINISH_REASON_EOS, 25, 100)
    answer_fills.record("interactive", pb.FINISH_REASON_STOP, 8, 32)
    assert fills_of(answer_fills) == {"batch": (2, 0.625), "interactive": (1, 0.25)}


@pytest.mark.parametrize(
    "finish_reason",
    [
        pb.FINISH_REASON_CANCELLED,
        pb.FINISH_REASON_ERROR,
        pb.FINISH_REASON_DEADLINE,
        pb.FINISH_REASON_PREEMPTED,
    ],
)
def test_an_answer_cut_short_by_anything_but_the_model_or_its_bound_says_nothing(finish_reason: int) -> None:
    answer_fills = AnswerFills()
    answer_fills.record("batch", finish_reason, 3, 100)
    assert fills_of(answer_fills) == {}


def test_the_mean_follows_recent_answers() -> None:
    answer_fills = AnswerFills()
    for _ in range(ANSWERS_AVERAGED):
        answer_fills.record("batch", pb.FINISH_REASON_EOS, 10, 100)
    for _ in range(4 * ANSWERS_AVERAGED):
        answer_fills.record("batch", pb.FINISH_REASON_LENGTH, 100, 100)
    num_answers, mean_fill = fills_of(answer_fills)["batch"]
    assert num_answers == 5 * ANSWERS_AVERAGED
    assert 0.98 < mean_fill <= 1.0  # the early short answers have all but faded
