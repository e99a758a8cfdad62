"""The reference engine, driven directly (no sockets, no threads)."""

from __future__ import annotations

import copy

import pytest
import torch
from engine_helpers import Answer, generate_greedy, make_request

from llmos.wire import pb
from workers.reference_engine import ReferenceEngine
from workers.requests import Delta, EngineRequest, SamplingOptions

torch.set_num_threads(1)

PROMPTS = [
    "Hello",
    "The harbour was quiet before dawn.",
    "To bake a simple loaf of bread, mix five hundred grams of flour with salt and yeast.",
    "Zoë read a novel about a café in Paris; " * 6,
]


def run_to_end(engine: ReferenceEngine) -> dict[str, Answer]:
    answers: dict[str, Answer] = {}
    while engine.has_work:
        for delta in engine.step():
            answer = answers.setdefault(delta.request_id, Answer())
            assert not answer.deltas or not answer.final.is_finished, "a delta after the final one"
            answer.add(delta)
    return answers


def test_concurrent_greedy_requests_equal_generate(model, tokenizer):
    engine = ReferenceEngine(model, tokenizer, max_num_seqs=3)  # the fourth waits for a slot
    for index, prompt in enumerate(PROMPTS):
        engine.add_request(make_request(tokenizer, f"r{index}", prompt, max_tokens=24))

    answers = run_to_end(engine)

    for index, prompt in enumerate(PROMPTS):
        answer = answers[f"r{index}"]
        expected = generate_greedy(model, tokenizer, prompt, 24)
        assert answer.token_ids == expected
        assert answer.text == tokenizer.decode(expected, skip_special_tokens=True)
        assert answer.final.finish_reason == pb.FINISH_REASON_LENGTH
        assert answer.deltas[0].prompt_tokens == len(tokenizer.encode(prompt))
        assert all(d.prompt_tokens == 0 for d in answer.deltas[1:])
        assert all(not d.text.endswith("\ufffd") for d in answer.deltas[:-1])
    assert engine.num_cached_tokens == 0


def test_stop_string_ends_the_text_before_its_first_match(model, tokenizer):
    prompt = PROMPTS[1]
    greedy = generate_greedy(model, tokenizer, prompt, 32)
    full_text = tokenizer.decode(greedy, skip_special_tokens=True)
    stop = next(
        full_text[k : k + 4]
        for k in range(8, len(full_text))
        if full_text[k : k + 4].isascii() and full_text[k : k + 4].isprintable()
    )
    stop_at = full_text.find(stop)
    # the stop completes with the first token whose text contains it; that token is sent
    num_tokens = next(
        n for n in range(1, 33) if stop in tokenizer.decode(greedy[:n], skip_special_tokens=True)
    )
    engine = ReferenceEngine(model, tokenizer)
    engine.add_request(make_request(tokenizer, "s", prompt, max_tokens=32, stop=("never here", stop)))

    answer = run_to_end(engine)["s"]

    assert answer.final.finish_reason == pb.FINISH_REASON_STOP
    assert answer.text == full_text[:stop_at]
    assert answer.token_ids == greedy[:num_tokens]


def test_max_tokens_and_context_length_end_with_length(model, tokenizer):
    prompt_ids = tokenizer.encode(PROMPTS[2])
    engine = ReferenceEngine(model, tokenizer, max_model_len=len(prompt_ids) + 3)
    engine.add_request(make_request(tokenizer, "short", PROMPTS[2], max_tokens=2))
    engine.add_request(make_request(tokenizer, "context", PROMPTS[2], max_tokens=50))

    answers = run_to_end(engine)

    assert len(answers["short"].token_ids) == 2
    assert len(answers["context"].token_ids) == 3  # the context is full
    assert answers["short"].final.finish_reason == pb.FINISH_REASON_LENGTH
    assert answers["context"].final.finish_reason == pb.FINISH_REASON_LENGTH


def test_eos_ends_the_request_and_is_a_token_but_not_text(model, tokenizer):
    eos_model = copy.deepcopy(model)
    greedy = generate_greedy(model, tokenizer, PROMPTS[1], 16)
    with torch.no_grad():  # make EOS win where the fourth greedy token would have
        eos_model.lm_head.weight[tokenizer.eos_token_id] = 2 * model.lm_head.weight[greedy[3]]
    expected = generate_greedy(eos_model, tokenizer, PROMPTS[1], 16)
    engine = ReferenceEngine(eos_model, tokenizer)
    engine.add_request(make_request(tokenizer, "e", PROMPTS[1], max_tokens=16))

    answer = run_to_end(engine)["e"]

    assert expected[-1] == tokenizer.eos_token_id and len(expected) < 16
    assert answer.token_ids == expected
    assert answer.final.finish_reason == pb.FINISH_REASON_EOS
    assert answer.text == tokenizer.decode(expected[:-1])


@pytest.mark.parametrize("num_resumed", [1, 7, 15])
def test_resume_continues_the_uninterrupted_answer(model, tokenizer, num_resumed):
    engine = ReferenceEngine(model, tokenizer)
    engine.add_request(make_request(tokenizer, "a", PROMPTS[2], max_tokens=20, stop=("zzz",)))
    whole = run_to_end(engine)["a"]
    # what a client had when the first worker died after `num_resumed` tokens
    sent = whole.deltas[:num_resumed]
    sent_text = "".join(d.text for d in sent)
    resumed_request = make_request(tokenizer, "a", PROMPTS[2], max_tokens=20, stop=("zzz",))
    resumed_request.generated_token_ids = whole.token_ids[:num_resumed]
    resumed_request.emitted_text_chars = len(sent_text)
    engine.add_request(resumed_request)

    rest = run_to_end(engine)["a"]

    assert whole.token_ids[:num_resumed] + rest.token_ids == whole.token_ids
    assert sent_text + rest.text == whole.text
    assert rest.deltas[0].prompt_tokens == len(tokenizer.encode(PROMPTS[2]))
    assert rest.final.finish_reason == pb.FINISH_REASON_LENGTH


def test_resume_at_max_tokens_finishes_at_once_with_the_held_back_text(model, tokenizer):
    engine = ReferenceEngine(model, tokenizer)
    engine.add_request(make_request(tokenizer, "a", PROMPTS[0], max_tokens=6))
    whole = run_to_end(engine)["a"]
    resumed = make_request(tokenizer, "a", PROMPTS[0], max_tokens=6)
    resumed.generated_token_ids = whole.token_ids
    resumed.emitted_text_chars = len(whole.text) - 2
    engine.add_request(resumed)

    deltas = engine.step()

    assert deltas == [
        Delta(
            "a",
            token_ids=[],
            text=whole.text[-2:],
            prompt_tokens=len(resumed.prompt_token_ids),
            is_finished=True,
            finish_reason=pb.FINISH_REASON_LENGTH,
        )
    ]
    assert not engine.has_work


def test_seeded_sampling_repeats_and_seeds_differ(model, tokenizer):
    sampling = dict(max_tokens=24, temperature=1.5, top_p=0.95, top_k=200)
    engine = ReferenceEngine(model, tokenizer)
    engine.add_request(make_request(tokenizer, "a", PROMPTS[1], seed=7, **sampling))
    engine.add_request(make_request(tokenizer, "b", PROMPTS[1], seed=7, **sampling))
    engine.add_request(make_request(tokenizer, "c", PROMPTS[1], seed=8, **sampling))

    answers = run_to_end(engine)

    assert answers["a"].token_ids == answers["b"].token_ids
    assert answers["a"].token_ids != answers["c"].token_ids


def test_top_k_one_is_greedy(model, tokenizer):
    engine = ReferenceEngine(model, tokenizer)
    engine.add_request(make_request(tokenizer, "k", PROMPTS[3], max_tokens=12, temperature=0.8, top_k=1))

    answer = run_to_end(engine)["k"]

    assert answer.token_ids == generate_greedy(model, tokenizer, PROMPTS[3], 12)


def test_cancel_frees_the_request_cache_at_once(model, tokenizer):
    engine = ReferenceEngine(model, tokenizer)
    engine.add_request(make_request(tokenizer, "keep", PROMPTS[0], max_tokens=5))
    engine.add_request(make_request(tokenizer, "drop", PROMPTS[2], max_tokens=50))
    engine.step()
    engine.step()
    keep_cached = engine.running["keep"].cache.get_seq_length()

    assert engine.cancel("drop") is True

    assert engine.num_cached_tokens == keep_cached
    assert engine.cancel("drop") is False
    answers = run_to_end(engine)
    assert set(answers) == {"keep"}
    assert engine.num_cached_tokens == 0


def test_too_long_prompt_is_an_error_delta(model, tokenizer):
    engine = ReferenceEngine(model, tokenizer, max_model_len=16)
    long_request = EngineRequest("long", list(range(10, 30)))  # 20 tokens
    fitting_request = EngineRequest("fits", list(range(10, 25)), SamplingOptions(max_tokens=8))  # 15

    engine.add_request(long_request)
    engine.add_request(fitting_request)
    answers = run_to_end(engine)

    error = answers["long"].final
    assert (error.is_finished, error.finish_reason, error.error_code) == (
        True,
        pb.FINISH_REASON_ERROR,
        pb.TOO_LARGE,
    )
    assert "20 tokens" in error.error_message and "at most 15" in error.error_message
    assert len(answers["fits"].token_ids) == 1
    assert answers["fits"].final.finish_reason == pb.FINISH_REASON_LENGTH
