"""LiveRequests, the SDKs' bookkeeping for resends, driven with plain messages: what a
broker answers a resend (a journalled catch-up from the index the client holds, or a
fresh answer from token 0) reaches the caller once, in order, with its text."""

from __future__ import annotations

from llmos.client import make_generate_request, make_pooling_request
from llmos.reconnect import LiveRequests
from llmos.wire import pb

NOW_S = 100.0
TEXT_BY_TOKEN = {10: "Once", 11: " upon", 12: " a", 13: " time", 14: ",", 15: " there"}


def chunk(request_id: str, index: int, token_ids: list[int]) -> pb.TokenChunk:
    text = "".join(TEXT_BY_TOKEN[token_id] for token_id in token_ids)
    return pb.TokenChunk(request_id=request_id, token_ids=token_ids, text=text, index=index)


def live_generation(request_id: str = "a") -> LiveRequests:
    live = LiveRequests()
    live.add(make_generate_request("prompt", request_id=request_id, max_tokens=6))
    return live


def delivered(live: LiveRequests, *messages: pb.TokenChunk) -> list[tuple[int, list[int], str]]:
    """(index, token ids, text) of each chunk the caller gets."""
    admitted = [live.admit(message, NOW_S) for message in messages]
    return [(m.index, list(m.token_ids), m.text) for m in admitted if isinstance(m, pb.TokenChunk)]


def test_a_resend_carries_the_original_request_and_the_tokens_held():
    live = live_generation()
    delivered(live, chunk("a", 0, [10, 11]), chunk("a", 2, [12]))
    [resend] = live.resends()
    assert isinstance(resend, pb.GenerateRequest)
    assert (resend.request_id, resend.prompt, resend.sampling.max_tokens) == ("a", "prompt", 6)
    assert (resend.is_resend, resend.resume_from_index) == (True, 3)


def test_a_pooling_resend_is_marked_and_a_cancelled_request_is_cancelled_again():
    live = LiveRequests()
    live.add(make_pooling_request(pb.TASK_KIND_EMBED, "text", request_id="e"))
    live.mark_cancelled("e")
    resend, cancel = live.resends()
    assert isinstance(resend, pb.EmbedRequest) and resend.is_resend and list(resend.inputs) == ["text"]
    assert cancel == pb.Cancel(request_id="e")


def test_a_journalled_catch_up_from_the_index_held_goes_on_where_the_stream_stopped():
    live = live_generation()
    assert live.admit(pb.Accepted(request_id="a"), NOW_S) == pb.Accepted(request_id="a")
    before = delivered(live, chunk("a", 0, [10, 11]))
    live.resends()
    assert live.admit(pb.Accepted(request_id="a"), NOW_S) is None  # the resend's Accepted
    after = delivered(live, chunk("a", 2, [12, 13, 14]), chunk("a", 5, [15]))
    assert before + after == [(0, [10, 11], "Once upon"), (2, [12, 13, 14], " a time,"), (5, [15], " there")]


def test_an_answer_generated_again_from_token_0_gives_only_the_tokens_not_held():
    live = live_generation()
    delivered(live, chunk("a", 0, [10]), chunk("a", 1, [11, 12]))
    live.resends()
    again = delivered(live, chunk("a", 0, [10, 11]), chunk("a", 2, [12, 13]), chunk("a", 4, [14, 15]))
    assert again == [(3, [13], " time"), (4, [14, 15], ", there")]


def test_a_journal_that_kept_fewer_tokens_than_were_sent_lines_up_on_a_chunk_boundary():
    live = live_generation()
    delivered(live, chunk("a", 0, [10, 11]), chunk("a", 2, [12]), chunk("a", 3, [13]))
    live.resends()
    assert delivered(live, chunk("a", 2, [12, 13, 14])) == [(4, [14], ",")]


def test_a_refused_resend_that_says_when_to_retry_goes_out_again_then():
    live = live_generation()
    live.admit(pb.Accepted(request_id="a"), NOW_S)
    live.resends()
    refusal = pb.Error(code=pb.UNKNOWN_MODEL, request_id="a", retry_after_ms=1000)
    assert live.admit(refusal, NOW_S) is None
    assert live.next_due_s() == NOW_S + 1.0
    assert live.due_resends(NOW_S + 0.5) == []
    [resend] = live.due_resends(NOW_S + 1.0)
    assert isinstance(resend, pb.GenerateRequest) and resend.is_resend
    assert live.next_due_s() is None


def test_errors_and_results_end_a_request_and_pass_to_the_caller():
    live = live_generation()
    refusal = pb.Error(code=pb.QUEUE_FULL, request_id="a", retry_after_ms=250)
    assert live.admit(refusal, NOW_S) == refusal  # a first send's refusal is the caller's
    assert len(live) == 0 and live.resends() == []
    live = live_generation()
    result = pb.GenerateResult(request_id="a", token_ids=[10])
    assert live.admit(result, NOW_S) == result
    assert len(live) == 0
    late = chunk("a", 0, [10])
    assert live.admit(late, NOW_S) is late  # not live: the caller's router drops it
