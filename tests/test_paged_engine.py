"""The paged engine, driven directly (no sockets, no threads), on CPU.

Greedy answers must equal `model.generate` run alone on each prompt, token for
token, however the requests were packed, chunked, preempted or resumed; and the
blocks must add up: every block in use is held by the requests whose tables
name it and by the prefix index, and requests hold exactly the blocks their
tokens need.
"""

from __future__ import annotations

from collections import Counter

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
from workers import cpu_kernels, paged_ops
from workers.batch_sequence import SequenceStatus
from workers.batched_engine import BatchedEngine
from workers.engine_factory import make_engine
from workers.paged_engine import PagedEngine
from workers.requests import Delta, EngineRequest, SamplingOptions

torch.set_num_threads(1)


def check_invariants(engine: PagedEngine) -> None:
    blocks, pool = engine.budget, engine.budget.pool
    assert blocks.num_request_blocks <= blocks.num_blocks, "over the KV budget"
    assert engine.num_running <= engine.max_num_seqs
    assert sorted(blocks.tables) == sorted(engine.running)
    holders = Counter(block_id for table in blocks.tables.values() for block_id in table.block_ids)
    holders.update(list(blocks.block_hashes))  # the index's own reference
    assert {b: n for b, n in enumerate(pool.ref_counts) if n} == dict(holders)
    assert pool.num_used_blocks == len(holders)
    assert sorted(blocks.idle_ids) == sorted(b for b in blocks.block_hashes if pool.ref_counts[b] == 1)
    for request_id, sequence in engine.running.items():
        table = blocks.tables[request_id]
        # a prefill holds its whole context; a decode its context and the next token's slot at most
        assert len(table.block_ids) >= blocks.blocks_for(sequence.num_cached_tokens)
        assert len(table.block_ids) <= blocks.blocks_for(sequence.num_context_tokens + 1)
    assert all(s.status is SequenceStatus.WAITING for s in engine.waiting)
    assert all(s.holds_kv for s in engine.running.values())


def run_to_end(
    engine: PagedEngine,
    arrivals: dict[int, list[EngineRequest]] | None = None,
    answers: dict[str, Answer] | None = None,
) -> dict[str, Answer]:
    return run_engine_to_end(engine, check_invariants, arrivals, answers)


def step_until(engine: PagedEngine, answers: dict[str, Answer], done) -> None:
    while not done():
        for delta in engine.step():
            answers.setdefault(delta.request_id, Answer()).add(delta)
        check_invariants(engine)


@pytest.mark.parametrize("max_num_batched_tokens", [40, 96, 2048])
def test_staggered_requests_each_equal_generate_alone(model, tokenizer, max_num_batched_tokens):
    prompts = {f"r{i}": prompt for i, prompt in enumerate(make_prompts(16, seed=1))}
    max_tokens = {request_id: 8 + 3 * (i % 7) for i, request_id in enumerate(prompts)}
    requests = [
        make_request(tokenizer, rid, prompt, max_tokens=max_tokens[rid]) for rid, prompt in prompts.items()
    ]
    arrivals = {0: requests[:6], **{3 * k: requests[4 + 2 * k : 6 + 2 * k] for k in range(1, 6)}}
    engine = PagedEngine(
        model, tokenizer, max_num_seqs=8, block_size=4, max_num_batched_tokens=max_num_batched_tokens
    )

    answers = run_to_end(engine, arrivals)

    assert_greedy(model, tokenizer, answers, prompts, max_tokens)
    for request_id, answer in answers.items():
        assert answer.deltas[0].prompt_tokens == len(tokenizer.encode(prompts[request_id]))
        assert all(len(d.token_ids) == 1 for d in answer.deltas)  # streamed token by token


def test_plain_torch_attention_is_told_each_steps_longest_context(model, tokenizer, monkeypatch):
    """Without the CPU kernels (and on a GPU) attention runs in plain torch, which pads to
    the step's longest context: the runner passes it from the host, so that a GPU step
    does not wait for the device in every layer to read it back."""
    told: list[tuple[int | None, int]] = []
    gathered = paged_ops.gathered_attention

    def recording(query, key_pool, value_pool, block_tables, token_rows, context_lens, scale, longest):
        told.append((longest, int(context_lens.max())))
        return gathered(query, key_pool, value_pool, block_tables, token_rows, context_lens, scale, longest)

    monkeypatch.setattr(paged_ops, "has_kernels", lambda: False)
    monkeypatch.setattr(paged_ops, "gathered_attention", recording)
    prompts = {f"r{i}": prompt for i, prompt in enumerate(make_prompts(6, seed=3))}
    max_tokens = {request_id: 5 + i for i, request_id in enumerate(prompts)}
    engine = PagedEngine(model, tokenizer, max_num_seqs=4, block_size=4, max_num_batched_tokens=24)

    requests = [make_request(tokenizer, r, text, max_tokens=max_tokens[r]) for r, text in prompts.items()]
    answers = run_to_end(engine, {0: requests})

    assert_greedy(model, tokenizer, answers, prompts, max_tokens)
    assert told and all(longest == actual for longest, actual in told)


def test_a_long_prompt_is_prefilled_in_chunks_beside_running_decodes(model, tokenizer):
    long_prompt = " ".join(WORDS[:80])
    engine = PagedEngine(model, tokenizer, max_num_seqs=4, block_size=4, max_num_batched_tokens=40)
    engine.add_request(make_request(tokenizer, "short", "The river", max_tokens=30))
    answers: dict[str, Answer] = {}
    step_until(engine, answers, lambda: "short" in answers)
    engine.add_request(make_request(tokenizer, "long", long_prompt, max_tokens=6))

    num_short_tokens = len(answers["short"].token_ids)
    step_until(engine, answers, lambda: "long" in answers)

    # the short one got a token in every step the long prompt's chunks took
    num_chunks = len(answers["short"].token_ids) - num_short_tokens
    assert num_chunks >= len(tokenizer.encode(long_prompt)) // 40
    run_to_end(engine, answers=answers)
    assert answers["long"].token_ids == generate_greedy(model, tokenizer, long_prompt, 6)
    assert answers["short"].token_ids == generate_greedy(model, tokenizer, "The river", 30)


def test_a_request_holds_the_blocks_its_tokens_need_and_memory_follows_the_blocks_written(model, tokenizer):
    engine = PagedEngine(model, tokenizer, max_num_seqs=4, num_blocks=256, block_size=4)
    prompt = " ".join(WORDS[:30])
    engine.add_request(make_request(tokenizer, "a", prompt, max_tokens=20))
    answers: dict[str, Answer] = {}
    step_until(engine, answers, lambda: len(answers.get("a", Answer()).token_ids) == 10)

    sequence = engine.running["a"]
    num_blocks = -(-(sequence.num_cached_tokens + 1) // 4)
    assert engine.budget.block_ids("a") == list(range(num_blocks))  # the lowest ids first
    num_bytes, num_live_tokens = engine.kv_usage()
    assert num_live_tokens == sequence.num_cached_tokens
    layer = engine.runner.cache.layers[0]
    bytes_per_block = 2 * layer.keys[0].numel() * layer.keys.element_size() * len(engine.runner.cache.layers)
    assert num_bytes == num_blocks * bytes_per_block  # of the 256 the pools have room for
    run_to_end(engine, answers=answers)


def test_preempt_then_resume_equals_the_uninterrupted_answer(model, tokenizer):
    prompt = make_prompts(1, seed=3)[0]
    sampling = dict(max_tokens=20, stop=("zzz",))  # a stop string holds text back
    engine = PagedEngine(model, tokenizer, max_num_seqs=4, block_size=4)
    engine.add_request(make_request(tokenizer, "other", "Knead the dough", max_tokens=40))
    engine.add_request(make_request(tokenizer, "a", prompt, **sampling))
    before: dict[str, Answer] = {}
    step_until(engine, before, lambda: len(before.get("a", Answer()).token_ids) >= 7)
    blocks_of_other = len(engine.budget.block_ids("other"))

    final = engine.preempt("a")

    assert final == Delta("a", is_finished=True, finish_reason=pb.FINISH_REASON_PREEMPTED)
    assert engine.num_request_blocks == blocks_of_other
    assert engine.preempt("a") is None
    resumed = make_request(tokenizer, "a", prompt, **sampling)  # as the broker re-dispatches it
    resumed.generated_token_ids = before["a"].token_ids
    resumed.emitted_text_chars = len(before["a"].text)
    hits_before = engine.prefix_caching.num_hit_tokens
    rest = run_to_end(engine, {0: [resumed]})["a"]

    whole = generate_greedy(model, tokenizer, prompt, 20)
    assert before["a"].token_ids + rest.token_ids == whole
    assert before["a"].text + rest.text == tokenizer.decode(whole, skip_special_tokens=True)
    context = len(tokenizer.encode(prompt)) + len(before["a"].token_ids)
    # everything computed was in whole blocks, kept: only the rest is computed again
    assert engine.prefix_caching.num_hit_tokens - hits_before == (context - 1) // 4 * 4


def test_an_oversubscribed_grant_preempts_the_latest_and_answers_stay_exact(model, tokenizer, monkeypatch):
    prompts = {f"r{i}": prompt for i, prompt in enumerate(make_prompts(8, seed=4, max_words=12))}
    max_tokens = dict.fromkeys(prompts, 24)
    engine = PagedEngine(model, tokenizer, max_num_seqs=8, num_blocks=48, block_size=4)
    victims: list[tuple[str, list[str]]] = []
    preempt_by_recompute = engine.preempt_by_recompute

    def record(sequence):
        victims.append((sequence.request_id, sorted(engine.running, key=lambda r: int(r[1:]))))
        preempt_by_recompute(sequence)

    monkeypatch.setattr(engine, "preempt_by_recompute", record)
    for request_id, prompt in prompts.items():
        engine.add_request(make_request(tokenizer, request_id, prompt, max_tokens=24))

    answers = run_to_end(engine)

    assert len(victims) >= 3
    assert all(victim == running[-1] for victim, running in victims)  # the latest arrival
    assert_greedy(model, tokenizer, answers, prompts, max_tokens)


def test_lower_priority_is_preempted_before_a_later_arrival(model, tokenizer):
    engine = PagedEngine(model, tokenizer, max_num_seqs=4, num_blocks=12, block_size=4, prefix_caching=False)
    low = make_request(tokenizer, "low", "The library opened at nine", max_tokens=24)
    low.priority = 1
    engine.add_request(low)
    engine.add_request(make_request(tokenizer, "high", "In the mountains the weather", max_tokens=24))

    answers: dict[str, Answer] = {}
    step_until(engine, answers, lambda: engine.waiting and "low" in answers)

    assert list(engine.running) == ["high"] and engine.waiting[0].request_id == "low"
    run_to_end(engine, answers=answers)
    assert answers["low"].token_ids == generate_greedy(model, tokenizer, "The library opened at nine", 24)


def test_a_shrunk_grant_preempts_at_the_next_step_and_a_new_block_size_starts_afresh(model, tokenizer):
    engine = PagedEngine(model, tokenizer, max_num_seqs=4, num_blocks=64, block_size=4)
    prompts = {f"r{i}": prompt for i, prompt in enumerate(make_prompts(3, seed=5, max_words=10))}
    for request_id, prompt in prompts.items():
        engine.add_request(make_request(tokenizer, request_id, prompt, max_tokens=16))
    answers: dict[str, Answer] = {}
    for _ in range(3):
        for delta in engine.step():
            answers.setdefault(delta.request_id, Answer()).add(delta)

    engine.set_kv_budget(num_blocks=6, block_size=4)
    for delta in engine.step():
        answers.setdefault(delta.request_id, Answer()).add(delta)
    check_invariants(engine)
    assert engine.waiting and engine.num_request_blocks <= 6

    version = engine.prefix_report_version
    engine.set_kv_budget(num_blocks=40, block_size=8)
    assert not engine.running and len(engine.waiting) == 3 and engine.budget.block_size == 8
    assert engine.prefix_report_version != version
    run_to_end(engine, answers=answers)
    assert_greedy(model, tokenizer, answers, prompts, dict.fromkeys(prompts, 16))


def test_cancel_frees_the_request_blocks_at_once(model, tokenizer):
    engine = PagedEngine(model, tokenizer, max_num_seqs=2, num_blocks=32, block_size=4, prefix_caching=False)
    engine.add_request(make_request(tokenizer, "keep", "Hello", max_tokens=5))
    engine.add_request(make_request(tokenizer, "drop", " ".join(WORDS[:20]), max_tokens=50))
    engine.step()
    assert engine.num_request_blocks > len(engine.budget.block_ids("keep"))

    assert engine.cancel("drop") is True

    assert engine.num_request_blocks == len(engine.budget.block_ids("keep"))
    assert engine.cancel("drop") is False
    assert "drop" not in run_to_end(engine)


def test_a_failing_forward_fails_its_requests_and_the_engine_goes_on(model, tokenizer, monkeypatch):
    engine = PagedEngine(model, tokenizer, max_num_seqs=2)
    engine.add_request(make_request(tokenizer, "a", "The river", max_tokens=5))
    engine.step()
    forward = engine.runner.forward

    def fail_once(rows):
        monkeypatch.setattr(engine.runner, "forward", forward)
        raise RuntimeError("out of memory")

    monkeypatch.setattr(engine.runner, "forward", fail_once)
    deltas = engine.step()

    assert [(d.request_id, d.error_code) for d in deltas] == [("a", pb.WORKER_FAILED)]
    assert engine.num_request_blocks == 0 and not engine.running
    answers = run_to_end(engine, {0: [make_request(tokenizer, "b", "The river", max_tokens=5)]})
    assert answers["b"].token_ids == generate_greedy(model, tokenizer, "The river", 5)


def test_seeded_sampling_repeats_whatever_the_batch(model, tokenizer):
    sampling = dict(max_tokens=12, temperature=0.9, top_k=20, seed=7)
    alone = PagedEngine(model, tokenizer)
    crowded = PagedEngine(model, tokenizer)
    request = make_request(tokenizer, "s", "The market", **sampling)
    others = [
        make_request(tokenizer, f"o{i}", p, max_tokens=12) for i, p in enumerate(make_prompts(5, seed=9))
    ]

    by_itself = run_to_end(alone, {0: [request]})["s"].token_ids
    in_a_crowd = run_to_end(
        crowded, {0: [*others[:3], make_request(tokenizer, "s", "The market", **sampling)]}
    )

    assert in_a_crowd["s"].token_ids == by_itself


def test_a_prompt_larger_than_the_grant_is_refused(model, tokenizer):
    engine = PagedEngine(model, tokenizer, num_blocks=4, block_size=4)
    engine.add_request(make_request(tokenizer, "big", " ".join(WORDS[:30]), max_tokens=4))

    (delta,) = engine.step()

    assert delta.error_code == pb.TOO_LARGE and "KV blocks" in delta.error_message
    assert not engine.has_work


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "phi3", "gpt2"])
def test_other_families_staggered_requests_equal_generate_alone(tokenizer, family):
    model = tiny_random_model(family, tokenizer, "sdpa")
    prompts = {f"r{i}": prompt for i, prompt in enumerate(make_prompts(6, seed=6, max_words=20))}
    max_tokens = dict.fromkeys(prompts, 10)
    requests = [make_request(tokenizer, rid, prompt, max_tokens=10) for rid, prompt in prompts.items()]
    engine = PagedEngine(
        model, tokenizer, max_num_seqs=4, num_blocks=80, block_size=4, max_num_batched_tokens=48
    )

    answers = run_to_end(engine, {0: requests[:3], 2: requests[3:]})

    assert_greedy(model, tokenizer, answers, prompts, max_tokens)


def test_a_model_with_a_sliding_window_is_refused_in_one_line(tokenizer):
    model = tiny_random_model("mistral", tokenizer, "sdpa")
    with pytest.raises(ValueError, match="full attention"):
        PagedEngine(model, tokenizer, max_model_len=64)


def test_a_cached_prefix_is_shared_by_block_id_and_the_answers_still_equal_generate(model, tokenizer):
    system = " ".join(WORDS[:24])
    prompts = {
        f"q{i}": f"{system} {question}" for i, question in enumerate(make_prompts(4, seed=8, max_words=6))
    }
    engine = PagedEngine(model, tokenizer, max_num_seqs=4, block_size=4)
    answers = run_to_end(engine, {0: [make_request(tokenizer, "first", system, max_tokens=4)]})
    first_blocks = set(engine.budget.indexed_ids.values())

    requests = [make_request(tokenizer, rid, prompt, max_tokens=8) for rid, prompt in prompts.items()]
    for request in requests:
        engine.add_request(request)
    for delta in engine.step():  # all four start, sharing the system prompt's blocks
        answers.setdefault(delta.request_id, Answer()).add(delta)

    num_shared = (len(tokenizer.encode(system)) - 1) // 4
    tables = [engine.budget.block_ids(rid) for rid in prompts]
    shared = set.intersection(*(set(table[:num_shared]) for table in tables))
    assert len(shared) == num_shared and shared <= first_blocks
    assert all(engine.budget.pool.ref_counts[b] == 5 for b in shared)  # four requests and the index
    run_to_end(engine, answers=answers)
    assert_greedy(model, tokenizer, answers, prompts, dict.fromkeys(prompts, 8))


def test_idle_cached_blocks_give_way_to_requests_before_anyone_is_preempted(model, tokenizer):
    engine = PagedEngine(model, tokenizer, max_num_seqs=2, num_blocks=40, block_size=4)
    run_to_end(engine, {0: [make_request(tokenizer, "old", " ".join(WORDS[:60]), max_tokens=8)]})
    assert engine.num_prefix_cache_blocks >= 20  # and the new request needs 28 of the 40

    prompt = " ".join(WORDS[100:160])
    answers = run_to_end(engine, {0: [make_request(tokenizer, "new", prompt, max_tokens=30)]})

    assert answers["new"].token_ids == generate_greedy(model, tokenizer, prompt, 30)
    assert engine.num_prefix_cache_blocks <= 40


def test_cached_prefixes_report_the_prompt_text_block_hashes(model, tokenizer):
    engine = PagedEngine(model, tokenizer, block_size=4)
    prompt = " ".join(WORDS[:40])
    version = engine.prefix_report_version
    run_to_end(engine, {0: [make_request(tokenizer, "a", prompt, max_tokens=4)]})

    assert engine.prefix_report_version != version
    reported = engine.cached_prefix_hashes()
    assert len(prompt) >= 2 * PREFIX_BLOCK_CHARS
    assert prompt_block_hashes(prompt)[0] in reported


def test_prefix_caching_can_be_turned_off(model, tokenizer):
    engine = PagedEngine(model, tokenizer, block_size=4, prefix_caching=False)
    run_to_end(engine, {0: [make_request(tokenizer, "a", " ".join(WORDS[:40]), max_tokens=4)]})
    run_to_end(engine, {0: [make_request(tokenizer, "b", " ".join(WORDS[:40]), max_tokens=4)]})

    assert not engine.prefix_caching.is_enabled
    assert engine.prefix_caching.num_hit_tokens == 0 and engine.num_prefix_cache_blocks == 0
    assert engine.budget.pool.num_used_blocks == 0


def test_the_factory_names_the_paged_engine(model, tokenizer):
    engine = make_engine(
        "paged",
        model,
        tokenizer,
        max_num_seqs=4,
        max_model_len=0,
        worker_id="w",
        num_blocks=64,
        block_size=8,
        max_num_batched_tokens=256,
    )
    assert isinstance(engine, PagedEngine) and engine.budget.num_blocks == 64
    request = EngineRequest("r", tokenizer.encode("The river"), SamplingOptions(max_tokens=3))
    assert run_to_end(engine, {0: [request]})["r"].token_ids == generate_greedy(
        model, tokenizer, "The river", 3
    )


def make_auto_engine(model, tokenizer, max_model_len: int = 0):
    return make_engine(
        "auto",
        model,
        tokenizer,
        max_num_seqs=2,
        max_model_len=max_model_len,
        worker_id="w",
        num_blocks=64,
        block_size=8,
        max_num_batched_tokens=256,
    )


@pytest.mark.skipif(not cpu_kernels.has_kernels(), reason="no C++ compiler for the kernels")
def test_auto_picks_the_paged_engine_on_cpu_for_a_family_it_computes(model, tokenizer):
    assert isinstance(make_auto_engine(model, tokenizer), PagedEngine)


def test_auto_picks_the_batched_engine_where_paged_would_not_run_or_not_fast(model, tokenizer, monkeypatch):
    sliding = tiny_random_model("mistral", tokenizer, "sdpa")
    assert isinstance(make_auto_engine(sliding, tokenizer, max_model_len=64), BatchedEngine)
    monkeypatch.setattr(cpu_kernels, "has_kernels", lambda: False)  # no compiler: plain torch attention
    assert isinstance(make_auto_engine(model, tokenizer), BatchedEngine)
