"""The batched engine, driven directly (no sockets, no threads), on CPU.

Greedy answers must equal `model.generate` run alone on each prompt, token for
token, however the requests were batched, chunked, preempted or resumed.
"""

from __future__ import annotations

import copy

import pytest
import torch
from engine_helpers import (
    WORDS,
    Answer,
    assert_greedy,
    generate_greedy,
    make_prompts,
    make_request,
    run_engine_to_end,
    tiny_random_model,
)

from llmos.prefix import PREFIX_BLOCK_CHARS, prompt_block_hashes
from llmos.wire import pb
from workers.batch_sequence import Sequence, SequenceStatus
from workers.batched_engine import BatchedEngine
from workers.engine_prefix import PREFIX_CACHE_HOLDER
from workers.requests import Delta, EngineRequest, SamplingOptions

torch.set_num_threads(1)


def check_invariants(engine: BatchedEngine) -> None:
    budget = engine.budget
    assert budget.num_used_blocks <= budget.num_blocks, "over the KV budget"
    assert engine.num_running <= engine.max_num_seqs
    assert engine.num_prefix_cache_blocks == engine.prefix_caching.num_cached_blocks
    for request_id, num_blocks in budget.num_blocks_held.items():
        if request_id == PREFIX_CACHE_HOLDER:
            continue
        sequence = engine.running[request_id]
        assert budget.blocks_for(sequence.num_cached_tokens) <= num_blocks
    # each request's status says where it is
    assert all(s.status is SequenceStatus.WAITING for s in engine.waiting)
    statuses = {request_id: s.status for request_id, s in engine.running.items()}
    assert sorted(engine.runner.batch.row_ids) == sorted(
        request_id for request_id, status in statuses.items() if status is SequenceStatus.DECODING
    )
    assert sorted(engine.job.request_ids if engine.job else []) == sorted(
        request_id for request_id, status in statuses.items() if status is SequenceStatus.PREFILLING
    )


def run_to_end(
    engine: BatchedEngine,
    arrivals: dict[int, list[EngineRequest]] | None = None,
    answers: dict[str, Answer] | None = None,
) -> dict[str, Answer]:
    return run_engine_to_end(engine, check_invariants, arrivals, answers)


def test_sixteen_staggered_requests_each_equal_generate_alone(model, tokenizer):
    prompts = {f"r{i}": prompt for i, prompt in enumerate(make_prompts(16, seed=1))}
    max_tokens = {request_id: 8 + 3 * (i % 7) for i, request_id in enumerate(prompts)}
    requests = [
        make_request(tokenizer, rid, prompt, max_tokens=max_tokens[rid]) for rid, prompt in prompts.items()
    ]
    # 6 at once, then the rest in twos every third step; 8 slots, so some wait
    arrivals = {0: requests[:6], **{3 * k: requests[4 + 2 * k : 6 + 2 * k] for k in range(1, 6)}}
    engine = BatchedEngine(model, tokenizer, max_num_seqs=8, max_num_batched_tokens=96)

    answers = run_to_end(engine, arrivals)

    assert_greedy(model, tokenizer, answers, prompts, max_tokens)
    for request_id, answer in answers.items():
        assert answer.deltas[0].prompt_tokens == len(tokenizer.encode(prompts[request_id]))
        assert all(d.prompt_tokens == 0 for d in answer.deltas[1:])
        assert all(len(d.token_ids) == 1 for d in answer.deltas)  # streamed token by token


def test_a_long_prompt_is_prefilled_in_chunks_while_running_requests_go_on(model, tokenizer):
    long_prompt = " ".join(WORDS[:120])
    num_long_tokens = len(tokenizer.encode(long_prompt))
    engine = BatchedEngine(model, tokenizer, max_num_seqs=4, max_num_batched_tokens=40)
    engine.add_request(make_request(tokenizer, "short", "The harbour", max_tokens=30))
    engine.step()
    engine.add_request(make_request(tokenizer, "long", long_prompt, max_tokens=5))

    steps_without_long = 0
    while [d.request_id for d in engine.step()] == ["short"]:  # never stalled
        steps_without_long += 1
        check_invariants(engine)

    assert num_long_tokens > 3 * 40
    # the short one decodes first: 40 - 1 tokens a step are left for the long prefill
    assert steps_without_long == -(-num_long_tokens // 39) - 1
    rest = run_to_end(engine)["long"]
    assert rest.token_ids == generate_greedy(model, tokenizer, long_prompt, 5)[1:]


def test_long_answers_grow_the_batch_cache_and_stay_exact(model, tokenizer):
    prompts = {"long": "Hello", "joins": "The library opened at nine o'clock.", "late": "In"}
    max_tokens = {"long": 150, "joins": 120, "late": 90}
    requests = {
        rid: make_request(tokenizer, rid, prompt, max_tokens=max_tokens[rid])
        for rid, prompt in prompts.items()
    }
    engine = BatchedEngine(model, tokenizer, max_num_seqs=4)

    answers = run_to_end(engine, {0: [requests["long"]], 20: [requests["joins"]], 70: [requests["late"]]})

    assert engine.runner.batch.capacity > 150  # it grew past its first allocation, rows and all
    assert_greedy(model, tokenizer, answers, prompts, max_tokens)


@pytest.mark.parametrize("num_before", [1, 6, 13])
def test_preempt_then_resume_equals_the_uninterrupted_answer(model, tokenizer, num_before):
    prompt = make_prompts(1, seed=3)[0]
    sampling = dict(max_tokens=20, stop=("zzz",))  # a stop string holds text back
    engine = BatchedEngine(model, tokenizer, max_num_seqs=4)
    engine.add_request(make_request(tokenizer, "other", "Knead the dough", max_tokens=40))
    engine.add_request(make_request(tokenizer, "a", prompt, **sampling))
    before: dict[str, Answer] = {}
    while len(before.get("a", Answer()).token_ids) < num_before:
        for delta in engine.step():
            answer = before.setdefault(delta.request_id, Answer())
            answer.add(delta)
    blocks_of_other = engine.budget.num_blocks_held["other"]

    final = engine.preempt("a")

    assert final == Delta("a", is_finished=True, finish_reason=pb.FINISH_REASON_PREEMPTED)
    assert engine.num_request_blocks == blocks_of_other
    assert engine.preempt("a") is None
    resumed = make_request(tokenizer, "a", prompt, **sampling)  # as the broker re-dispatches it
    resumed.generated_token_ids = before["a"].token_ids
    resumed.emitted_text_chars = len(before["a"].text)
    engine.add_request(resumed)
    rest = run_to_end(engine)["a"]
    whole = generate_greedy(model, tokenizer, prompt, 20)
    assert before["a"].token_ids + rest.token_ids == whole
    assert before["a"].text + rest.text == tokenizer.decode(whole, skip_special_tokens=True)
    assert rest.deltas[0].prompt_tokens == len(tokenizer.encode(prompt))


def test_a_preempted_request_resumed_here_recomputes_only_what_the_cache_lacks(model, tokenizer):
    prompt = " ".join(WORDS[:50])
    engine = BatchedEngine(model, tokenizer, max_num_seqs=2, block_size=4)
    engine.add_request(make_request(tokenizer, "a", prompt, max_tokens=30))
    before = Answer()
    while len(before.token_ids) < 12:
        for delta in engine.step():
            before.add(delta)
    engine.preempt("a")
    hits_before = engine.prefix_caching.num_hit_tokens

    resumed = make_request(tokenizer, "a", prompt, max_tokens=30)  # as the broker re-dispatches it
    resumed.generated_token_ids = before.token_ids
    resumed.emitted_text_chars = len(before.text)
    rest = run_to_end(engine, {0: [resumed]})["a"]

    context = len(tokenizer.encode(prompt)) + len(before.token_ids)
    assert engine.prefix_caching.num_hit_tokens - hits_before == (context - 1) // 4 * 4
    assert before.token_ids + rest.token_ids == generate_greedy(model, tokenizer, prompt, 30)


def test_an_oversubscribed_kv_budget_preempts_the_latest_and_answers_stay_exact(
    model, tokenizer, monkeypatch
):
    prompts = {f"r{i}": prompt for i, prompt in enumerate(make_prompts(8, seed=4, max_words=12))}
    max_tokens = dict.fromkeys(prompts, 24)
    # 8 requests of up to ~40 + 24 tokens in 48 blocks of 4 tokens: about three fit at once
    engine = BatchedEngine(model, tokenizer, max_num_seqs=8, num_blocks=48, block_size=4)
    victims: list[tuple[str, list[str]]] = []
    preempt_by_recompute = engine.preempt_by_recompute

    def record(sequence):
        victims.append((sequence.request_id, sorted(engine.running, key=lambda r: int(r[1:]))))
        preempt_by_recompute(sequence)

    monkeypatch.setattr(engine, "preempt_by_recompute", record)
    for request_id, prompt in prompts.items():
        engine.add_request(make_request(tokenizer, request_id, prompt, max_tokens=24))

    answers = run_to_end(engine)  # checks the budget after every step

    assert len(victims) >= 3
    assert all(victim == running[-1] for victim, running in victims)  # the latest arrival
    assert_greedy(model, tokenizer, answers, prompts, max_tokens)


def test_lower_priority_is_preempted_before_a_later_arrival(model, tokenizer):
    engine = BatchedEngine(model, tokenizer, max_num_seqs=4, num_blocks=12, block_size=4)
    low = make_request(tokenizer, "low", "The library opened at nine", max_tokens=24)
    low.priority = 1
    engine.add_request(low)
    engine.add_request(make_request(tokenizer, "high", "In the mountains the weather", max_tokens=24))

    answers: dict[str, Answer] = {}
    while not engine.waiting or "low" not in answers:
        for delta in engine.step():
            answers.setdefault(delta.request_id, Answer()).token_ids += delta.token_ids
        check_invariants(engine)

    assert list(engine.running) == ["high"] and engine.waiting[0].request_id == "low"
    run_to_end(engine, answers=answers)
    assert answers["low"].token_ids == generate_greedy(model, tokenizer, "The library opened at nine", 24)


def test_a_shrunk_budget_preempts_at_the_next_step(model, tokenizer):
    engine = BatchedEngine(model, tokenizer, max_num_seqs=4, num_blocks=64, block_size=4)
    for index, prompt in enumerate(make_prompts(3, seed=5, max_words=10)):
        engine.add_request(make_request(tokenizer, f"r{index}", prompt, max_tokens=16))
    for _ in range(3):
        engine.step()

    engine.set_kv_budget(num_blocks=3, block_size=8)
    engine.step()

    check_invariants(engine)
    assert engine.waiting and engine.budget.num_used_blocks <= 3
    run_to_end(engine)


def test_cancel_frees_the_request_blocks_at_once(model, tokenizer):
    engine = BatchedEngine(model, tokenizer, max_num_seqs=2, num_blocks=32, block_size=4)
    engine.add_request(make_request(tokenizer, "keep", "Hello", max_tokens=5))
    engine.add_request(make_request(tokenizer, "drop", make_prompts(1, seed=6)[0], max_tokens=50))
    engine.add_request(make_request(tokenizer, "queued", "Hello", max_tokens=5))
    engine.step()
    engine.step()
    held_by_keep = engine.budget.num_blocks_held["keep"]

    assert engine.cancel("drop") is True
    assert engine.cancel("queued") is True

    assert engine.num_request_blocks == held_by_keep
    assert engine.num_cached_tokens == engine.running["keep"].num_cached_tokens
    assert engine.cancel("drop") is False
    assert set(run_to_end(engine)) == {"keep"}
    assert engine.num_request_blocks == 0


def test_a_failing_forward_fails_its_requests_and_the_engine_goes_on(model, tokenizer, monkeypatch):
    engine = BatchedEngine(model, tokenizer, max_num_seqs=1)
    engine.add_request(make_request(tokenizer, "hit", "Hello", max_tokens=8))
    engine.add_request(make_request(tokenizer, "next", "The harbour", max_tokens=8))
    engine.step()
    decode = engine.runner.decode

    def fail_once(last_token_ids):
        monkeypatch.setattr(engine.runner, "decode", decode)
        raise RuntimeError("out of memory")

    monkeypatch.setattr(engine.runner, "decode", fail_once)
    failed = [d for d in engine.step() if d.request_id == "hit"]
    answers = run_to_end(engine)

    assert (failed[0].finish_reason, failed[0].error_code) == (pb.FINISH_REASON_ERROR, pb.WORKER_FAILED)
    assert "out of memory" in failed[0].error_message
    assert answers["next"].token_ids == generate_greedy(model, tokenizer, "The harbour", 8)


def test_a_failing_prefill_fails_its_whole_job_once_and_the_batch_goes_on(model, tokenizer, monkeypatch):
    engine = BatchedEngine(model, tokenizer, max_num_seqs=4, mixed_steps=False)
    engine.add_request(make_request(tokenizer, "running", "Hello", max_tokens=8))
    running = Answer()
    for delta in engine.step():
        running.add(delta)
    for request_id in ("a", "b"):
        engine.add_request(make_request(tokenizer, request_id, "The harbour", max_tokens=8))
    prefill = engine.runner.prefill

    def fail_once(job, num_columns):
        monkeypatch.setattr(engine.runner, "prefill", prefill)
        raise RuntimeError("out of memory")

    monkeypatch.setattr(engine.runner, "prefill", fail_once)
    deltas = engine.step()
    failed = [d for d in deltas if d.request_id in ("a", "b")]
    for delta in deltas:
        if delta.request_id == "running":
            running.add(delta)

    assert [(d.request_id, d.error_code) for d in failed] == [
        ("a", pb.WORKER_FAILED),
        ("b", pb.WORKER_FAILED),
    ]
    assert engine.find("a") is None and not engine.waiting and list(engine.running) == ["running"]
    check_invariants(engine)
    running.deltas += run_to_end(engine)["running"].deltas
    assert [t for d in running.deltas for t in d.token_ids] == generate_greedy(model, tokenizer, "Hello", 8)


def test_a_sequence_moves_only_along_its_transitions(model, tokenizer):
    sequence = Sequence(
        make_request(tokenizer, "r", "Hello"),
        arrival_seq=0,
        generated_token_ids=[],
        emitted_text_chars=0,
        generator=None,
        detokenizer=None,
    )
    sequence.move_to(SequenceStatus.PREFILLING)
    sequence.move_to(SequenceStatus.DECODING)
    sequence.move_to(SequenceStatus.WAITING)  # preempted by recompute
    with pytest.raises(AssertionError, match="WAITING -> DECODING"):
        sequence.move_to(SequenceStatus.DECODING)  # a newcomer is prefilled first
    sequence.move_to(SequenceStatus.CANCELLED)
    assert sequence.has_left and not sequence.holds_kv
    with pytest.raises(AssertionError):
        sequence.move_to(SequenceStatus.WAITING)  # a request that left never comes back


def test_stop_string_ends_the_text_before_its_first_match(model, tokenizer):
    prompt = "The harbour was quiet before dawn."
    greedy = generate_greedy(model, tokenizer, prompt, 32)
    full_text = tokenizer.decode(greedy, skip_special_tokens=True)
    stop = next(
        full_text[k : k + 4]
        for k in range(8, len(full_text))
        if full_text[k : k + 4].isascii() and full_text[k : k + 4].isprintable()
    )
    num_tokens = next(
        n for n in range(1, 33) if stop in tokenizer.decode(greedy[:n], skip_special_tokens=True)
    )
    engine = BatchedEngine(model, tokenizer)
    engine.add_request(make_request(tokenizer, "other", "Hello", max_tokens=40))
    engine.add_request(make_request(tokenizer, "s", prompt, max_tokens=32, stop=("never here", stop)))

    answer = run_to_end(engine)["s"]

    assert answer.final.finish_reason == pb.FINISH_REASON_STOP
    assert answer.text == full_text[: full_text.find(stop)]
    assert answer.token_ids == greedy[:num_tokens]


def test_seeded_sampling_repeats_whatever_the_batch(model, tokenizer):
    sampling = dict(max_tokens=24, temperature=1.5, top_p=0.95, top_k=200)
    prompt = "The harbour was quiet before dawn."
    alone = BatchedEngine(model, tokenizer)
    alone.add_request(make_request(tokenizer, "a", prompt, seed=7, **sampling))
    crowded = BatchedEngine(model, tokenizer)
    crowded.add_request(make_request(tokenizer, "g", "Hello", max_tokens=30))
    crowded.add_request(make_request(tokenizer, "b", prompt, seed=7, **sampling))
    crowded.add_request(make_request(tokenizer, "c", prompt, seed=8, **sampling))

    a = run_to_end(alone)["a"]
    crowd = run_to_end(crowded)

    assert a.token_ids == crowd["b"].token_ids
    assert a.token_ids != crowd["c"].token_ids


def test_eos_ends_the_request_and_is_a_token_but_not_text(model, tokenizer):
    eos_model = copy.deepcopy(model)
    prompt = "The harbour was quiet before dawn."
    greedy = generate_greedy(model, tokenizer, prompt, 16)
    with torch.no_grad():  # make EOS win where the fourth greedy token would have
        eos_model.lm_head.weight[tokenizer.eos_token_id] = 2 * model.lm_head.weight[greedy[3]]
    expected = generate_greedy(eos_model, tokenizer, prompt, 16)
    engine = BatchedEngine(eos_model, tokenizer)
    engine.add_request(make_request(tokenizer, "other", "Hello", max_tokens=16))
    engine.add_request(make_request(tokenizer, "e", prompt, max_tokens=16))

    answer = run_to_end(engine)["e"]

    assert expected[-1] == tokenizer.eos_token_id and len(expected) < 16
    assert answer.token_ids == expected
    assert answer.final.finish_reason == pb.FINISH_REASON_EOS
    assert answer.text == tokenizer.decode(expected[:-1])


def test_resume_at_max_tokens_finishes_at_once_with_the_held_back_text(model, tokenizer):
    engine = BatchedEngine(model, tokenizer)
    whole = generate_greedy(model, tokenizer, "Hello", 6)
    resumed = make_request(tokenizer, "a", "Hello", max_tokens=6)
    resumed.generated_token_ids = whole
    resumed.emitted_text_chars = 2
    engine.add_request(resumed)

    assert engine.step() == [
        Delta(
            "a",
            token_ids=[],
            text=tokenizer.decode(whole)[2:],
            prompt_tokens=len(resumed.prompt_token_ids),
            is_finished=True,
            finish_reason=pb.FINISH_REASON_LENGTH,
        )
    ]
    assert not engine.has_work


def test_a_prompt_larger_than_the_kv_budget_is_refused(model, tokenizer):
    engine = BatchedEngine(model, tokenizer, num_blocks=4, block_size=4)
    engine.add_request(EngineRequest("big", list(range(10, 26))))  # 16 + 1 tokens
    engine.add_request(EngineRequest("fits", list(range(10, 20)), SamplingOptions(max_tokens=50)))

    answers = run_to_end(engine)

    assert (answers["big"].final.finish_reason, answers["big"].final.error_code) == (
        pb.FINISH_REASON_ERROR,
        pb.TOO_LARGE,
    )
    assert len(answers["fits"].token_ids) == 6  # then it alone fills the 16 tokens: LENGTH
    assert answers["fits"].final.finish_reason == pb.FINISH_REASON_LENGTH


@pytest.mark.parametrize(
    "family, attn_implementation",
    [
        ("gpt2", "sdpa"),
        ("gpt2", "eager"),
        ("qwen2", "sdpa"),
        ("qwen3", "sdpa"),
        ("phi3", "sdpa"),
        ("mistral", "sdpa"),
    ],
)
def test_other_families_staggered_requests_equal_generate_alone(tokenizer, family, attn_implementation):
    model = tiny_random_model(family, tokenizer, attn_implementation)
    prompts = {f"g{i}": prompt for i, prompt in enumerate(make_prompts(6, seed=7, max_words=20))}
    max_tokens = dict.fromkeys(prompts, 12)
    requests = [make_request(tokenizer, rid, prompt, max_tokens=12) for rid, prompt in prompts.items()]
    engine = BatchedEngine(model, tokenizer, max_num_seqs=4, num_blocks=40, block_size=4)

    answers = run_to_end(engine, {0: requests[:3], 2: requests[3:5], 5: requests[5:]})

    assert_greedy(model, tokenizer, answers, prompts, max_tokens)
    # newcomers join in the decode forward, but not past a sliding window (Mistral's here)
    assert engine.runner.supports_mixed_steps == (family != "mistral")


# ---------------------------------------------------------------- prefix caching

SYSTEM_PROMPT = " ".join(WORDS[:60])  # a long shared start, as a chat assistant's instructions


def test_a_cached_prefix_is_reused_and_the_answers_still_equal_generate(model, tokenizer):
    prompts = {
        "first": SYSTEM_PROMPT + " Question one?",
        "same": SYSTEM_PROMPT + " Question one?",
        "longer": SYSTEM_PROMPT + " Question two is longer than the first?",
    }
    max_tokens = dict.fromkeys(prompts, 10)
    engine = BatchedEngine(model, tokenizer, max_num_seqs=4, block_size=8)

    answers = run_to_end(
        engine,
        {
            0: [make_request(tokenizer, "first", prompts["first"], max_tokens=10)],
            3: [make_request(tokenizer, rid, prompts[rid], max_tokens=10) for rid in ("same", "longer")],
        },
    )

    assert_greedy(model, tokenizer, answers, prompts, max_tokens)
    shared = len(tokenizer.encode(SYSTEM_PROMPT)) // 8 * 8
    assert engine.prefix_caching.num_hit_tokens >= 2 * shared  # both later ones skipped the start
    assert engine.num_prefix_cache_blocks == engine.prefix_caching.num_cached_blocks > 0


def test_the_next_turn_of_a_chat_reuses_the_previous_answer(model, tokenizer):
    engine = BatchedEngine(model, tokenizer, max_num_seqs=2, block_size=4)
    first = SYSTEM_PROMPT + " Hello?"
    answers = run_to_end(engine, {0: [make_request(tokenizer, "turn1", first, max_tokens=24)]})
    turn1_ids = tokenizer.encode(first) + answers["turn1"].token_ids
    hits_before = engine.prefix_caching.num_hit_tokens

    second = EngineRequest("turn2", turn1_ids + tokenizer.encode(" And then?"), SamplingOptions(max_tokens=8))
    answers = run_to_end(engine, {0: [second]})

    # prompt and answer were cached when turn 1 ended (but its last token, never fed)
    assert engine.prefix_caching.num_hit_tokens - hits_before == (len(turn1_ids) - 1) // 4 * 4
    expected = model.generate(
        torch.tensor([second.prompt_token_ids]),
        do_sample=False,
        attention_mask=torch.ones(1, len(second.prompt_token_ids), dtype=torch.long),
        max_new_tokens=8,
    )[0, len(second.prompt_token_ids) :].tolist()
    assert answers["turn2"].token_ids == expected


def test_cached_blocks_give_way_to_requests_before_anyone_is_preempted(model, tokenizer):
    engine = BatchedEngine(model, tokenizer, max_num_seqs=2, num_blocks=40, block_size=4)
    run_to_end(engine, {0: [make_request(tokenizer, "warm", SYSTEM_PROMPT, max_tokens=4)]})
    assert engine.num_prefix_cache_blocks >= 15  # about half the budget holds the cached prompt

    prompt = " ".join(reversed(WORDS[:40]))  # shares nothing with it
    answers = run_to_end(engine, {0: [make_request(tokenizer, "big", prompt, max_tokens=60)]})

    assert not any(d.finish_reason == pb.FINISH_REASON_PREEMPTED for d in answers["big"].deltas)
    assert answers["big"].token_ids == generate_greedy(model, tokenizer, prompt, 60)
    assert engine.budget.num_used_blocks <= engine.budget.num_blocks


def test_a_model_with_a_sliding_window_keeps_no_prefix_cache(tokenizer):
    model = tiny_random_model("mistral", tokenizer, "sdpa")
    assert not BatchedEngine(model, tokenizer, max_model_len=64).prefix_caching.is_enabled
    assert BatchedEngine(model, tokenizer, max_model_len=16).prefix_caching.is_enabled  # never slides


def test_prefix_caching_can_be_turned_off(model, tokenizer):
    engine = BatchedEngine(model, tokenizer, prefix_caching=False)
    run_to_end(engine, {0: [make_request(tokenizer, "a", SYSTEM_PROMPT, max_tokens=2)]})
    assert not engine.prefix_caching.is_enabled and engine.budget.num_used_blocks == 0
    assert engine.cached_prefix_hashes() == []


def test_cached_prefixes_report_the_prompt_text_block_hashes(model, tokenizer):
    engine = BatchedEngine(model, tokenizer, block_size=4)
    version = engine.prefix_report_version
    run_to_end(engine, {0: [make_request(tokenizer, "a", SYSTEM_PROMPT, max_tokens=2)]})

    assert engine.prefix_report_version != version
    reported = set(engine.cached_prefix_hashes())
    # every whole 64-character block of the prompt but the last, which its uncached tail may cut
    num_covered = len(SYSTEM_PROMPT) // PREFIX_BLOCK_CHARS - 1
    assert num_covered >= 3 and set(prompt_block_hashes(SYSTEM_PROMPT)[:num_covered]) <= reported


def test_linears_on_onednn_keep_answers_exact_and_leave_the_model_as_it_was(model, tokenizer):
    prompts = {f"h{i}": prompt for i, prompt in enumerate(make_prompts(6, seed=3, max_words=20))}
    max_tokens = dict.fromkeys(prompts, 10)
    engine = BatchedEngine(model, tokenizer, max_num_seqs=4)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert engine.runner.cpu_linears.linears == linears and linears

    answers = run_to_end(
        engine, {0: [make_request(tokenizer, rid, prompt, max_tokens=10) for rid, prompt in prompts.items()]}
    )

    assert_greedy(model, tokenizer, answers, prompts, max_tokens)
    assert all("forward" not in vars(linear) for linear in linears)  # the model is as it was


def test_newcomers_with_cached_prefixes_are_prefilled_together(model, tokenizer):
    engine = BatchedEngine(model, tokenizer, max_num_seqs=8, block_size=4)
    run_to_end(engine, {0: [make_request(tokenizer, "warm", SYSTEM_PROMPT + " Hi?", max_tokens=2)]})
    questions = [
        " Why?",
        " What time is it now?",
        " Tell me about the sea and the harbour.",
        " Where is my parcel?",
    ]
    prompts = {f"q{i}": SYSTEM_PROMPT + question for i, question in enumerate(questions)}
    for request_id, prompt in prompts.items():
        engine.add_request(make_request(tokenizer, request_id, prompt, max_tokens=8))
    hits_before = engine.prefix_caching.num_hit_tokens

    answers: dict[str, Answer] = {}
    for delta in engine.step():  # one job for all four, starting after the shared columns
        answer = answers.setdefault(delta.request_id, Answer())
        answer.add(delta)
    assert engine.num_running == 4 and engine.runner.batch.num_rows == 4
    shared_tokens = len(tokenizer.encode(SYSTEM_PROMPT)) // 4 * 4 - 4
    assert engine.prefix_caching.num_hit_tokens - hits_before >= 4 * shared_tokens
    answers = run_to_end(engine, answers=answers)

    assert_greedy(model, tokenizer, answers, prompts, dict.fromkeys(prompts, 8))
