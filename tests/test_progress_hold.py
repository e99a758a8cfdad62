"""A worker holds back the tokens of requests whose clients read only the result."""

from __future__ import annotations

from llmos.wire import pb
from workers.progress_hold import ProgressHold

INTERVAL_S = 0.25


def dispatch(request_id: str, max_tokens: int, is_final_only: bool = True, resumed: int = 0) -> pb.Dispatch:
    return pb.Dispatch(
        request_id=request_id,
        prompt="p",
        sampling=pb.SamplingParams(max_tokens=max_tokens),
        generated_token_ids=list(range(resumed)),
        is_final_only=is_final_only,
    )


def token(request_id: str, token_id: int, prompt_tokens: int = 0) -> pb.RequestDelta:
    return pb.RequestDelta(
        request_id=request_id, token_ids=[token_id], text=f"<{token_id}>", prompt_tokens=prompt_tokens
    )


def last_token(request_id: str, token_id: int, prompt_tokens: int = 0) -> pb.RequestDelta:
    delta = token(request_id, token_id, prompt_tokens)
    delta.is_finished, delta.finish_reason = True, pb.FINISH_REASON_LENGTH
    return delta


def final(request_id: str, finish_reason: int) -> pb.RequestDelta:
    return pb.RequestDelta(request_id=request_id, is_finished=True, finish_reason=finish_reason)


def run_steps(hold: ProgressHold, request_id: str, max_tokens: int, step_s: float) -> list[pb.RequestDelta]:
    """One token a step until max_tokens; every delta the hold lets out."""
    sent = []
    for index in range(max_tokens):
        delta = (last_token if index == max_tokens - 1 else token)(request_id, index, 7 if index == 0 else 0)
        sent += hold.take([delta], index * step_s)
    return sent


def test_a_final_only_answer_is_reported_first_token_one_short_of_the_end_and_last():
    hold = ProgressHold(INTERVAL_S)
    hold.watch(dispatch("whole", max_tokens=8))

    sent = run_steps(hold, "whole", 8, step_s=0.01)

    assert [list(d.token_ids) for d in sent] == [[0], [1, 2, 3, 4, 5, 6], [7]]
    assert [d.text for d in sent] == ["<0>", "<1><2><3><4><5><6>", "<7>"]
    assert sent[0].prompt_tokens == 7
    assert [d.is_finished for d in sent] == [False, False, True]
    assert len(hold) == 0  # forgotten with its final delta


def test_held_tokens_go_out_once_they_waited_the_report_interval():
    hold = ProgressHold(INTERVAL_S)
    hold.watch(dispatch("long", max_tokens=100))

    sent = [d for index in range(12) for d in hold.take([token("long", index)], index * 0.1)]

    # first at once; then held from t=0.1 and sent at t=0.4, held from 0.5 and sent at 0.8, ...
    assert [list(d.token_ids) for d in sent] == [[0], [1, 2, 3, 4], [5, 6, 7, 8]]  # 9-11 still held


def test_a_streamed_request_and_other_tasks_pass_as_they_come():
    hold = ProgressHold(INTERVAL_S)
    hold.watch(dispatch("streamed", max_tokens=8, is_final_only=False))
    embed = dispatch("embedded", max_tokens=8)
    embed.kind = pb.TASK_KIND_EMBED
    hold.watch(embed)

    sent = run_steps(hold, "streamed", 8, step_s=0.01)

    assert len(sent) == 8 and len(hold) == 0


def test_a_preempted_request_gets_its_held_tokens_then_its_bare_final_delta():
    hold = ProgressHold(INTERVAL_S)
    hold.watch(dispatch("victim", max_tokens=50))
    sent = [*hold.take([token("victim", 0)], 0.0), *hold.take([token("victim", 1)], 0.01)]
    sent += hold.take([token("victim", 2), final("victim", pb.FINISH_REASON_PREEMPTED)], 0.02)

    assert [list(d.token_ids) for d in sent] == [[0], [1, 2], []]
    assert sent[-1].finish_reason == pb.FINISH_REASON_PREEMPTED and sent[-1].is_finished
    assert len(hold) == 0


def test_a_resumed_request_counts_the_tokens_the_broker_has_toward_one_short_of_the_end():
    hold = ProgressHold(INTERVAL_S)
    hold.watch(dispatch("resumed", max_tokens=8, resumed=5))

    sent = [*hold.take([token("resumed", 5)], 0.0), *hold.take([token("resumed", 6)], 0.01)]
    sent += hold.take([last_token("resumed", 7)], 0.02)

    # 5 + 1 reported at once (first of this dispatch), 7 = max_tokens - 1 at once, then the last
    assert [list(d.token_ids) for d in sent] == [[5], [6], [7]]


def test_clear_forgets_every_request_and_what_it_held():
    hold = ProgressHold(INTERVAL_S)
    hold.watch(dispatch("a", max_tokens=50))
    hold.take([token("a", 0)], 0.0)
    hold.take([token("a", 1)], 0.01)  # held

    hold.clear()

    assert len(hold) == 0
    assert [list(d.token_ids) for d in hold.take([token("a", 2)], 0.02)] == [[2]]  # unknown: passes
