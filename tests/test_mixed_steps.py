"""Mixed steps: a step's decodes and its newcomers' prefill in one forward
(workers.mixed_step), driven through the batched engine on CPU. Greedy answers must
still equal `model.generate` alone, token for token."""

from __future__ import annotations

import torch
from engine_helpers import Answer, generate_greedy, make_request

from llmos.tiny_model import CORPUS
from llmos.wire import pb
from workers.batched_engine import BatchedEngine

torch.set_num_threads(1)

WORDS = CORPUS.split()
SYSTEM_PROMPT = " ".join(WORDS[:60])


class Forwards:
    """Counts the model's forwards."""

    def __init__(self, model) -> None:
        self.count = 0
        self.handle = model.register_forward_hook(self.hook)

    def hook(self, *args) -> None:
        self.count += 1


def step(engine: BatchedEngine, answers: dict[str, Answer]) -> None:
    for delta in engine.step():
        answers.setdefault(delta.request_id, Answer()).add(delta)


def run_with_arrivals(
    model,
    tokenizer,
    prompts: dict[str, str],
    arrival_steps: dict[str, int],
    max_tokens: int,
    **engine_options,
) -> tuple[dict[str, Answer], list[int]]:
    """Step until idle, adding each request at its step; the answers, and the forwards of
    each step."""
    engine = BatchedEngine(model, tokenizer, **engine_options)
    forwards = Forwards(model)
    answers: dict[str, Answer] = {}
    per_step = []
    try:
        number = 0
        while engine.has_work or number <= max(arrival_steps.values()):
            for request_id, arrival in arrival_steps.items():
                if arrival == number:
                    engine.add_request(
                        make_request(tokenizer, request_id, prompts[request_id], max_tokens=max_tokens)
                    )
            before = forwards.count
            step(engine, answers)
            per_step.append(forwards.count - before)
            number += 1
    finally:
        forwards.handle.remove()
    assert engine.num_request_blocks == 0 and engine.runner.batch.num_rows == 0
    return answers, per_step


def test_newcomers_joining_a_running_batch_share_its_forward(model, tokenizer):
    prompts = {
        "first": "The harbour was quiet that morning",
        "second": "In the library",
        "third": " ".join(WORDS[10:40]),
        "fourth": "Hello",
    }
    arrivals = {"first": 0, "second": 2, "third": 4, "fourth": 4}

    mixed, mixed_forwards = run_with_arrivals(model, tokenizer, prompts, arrivals, 10, max_num_seqs=4)
    apart, apart_forwards = run_with_arrivals(
        model, tokenizer, prompts, arrivals, 10, max_num_seqs=4, mixed_steps=False
    )

    for request_id, prompt in prompts.items():
        expected = generate_greedy(model, tokenizer, prompt, 10)
        assert mixed[request_id].token_ids == apart[request_id].token_ids == expected, request_id
    assert set(mixed_forwards) == {1}, "one forward a step, newcomers or not"
    assert apart_forwards[2] == apart_forwards[4] == 2  # without: a decode, then a prefill
    # the newcomers still get their first token in the step they join
    assert [len(mixed[r].token_ids) for r in ("second", "third")] == [10, 10]


def test_newcomers_with_cached_prefixes_join_a_running_batch_in_one_forward(model, tokenizer):
    engine = BatchedEngine(model, tokenizer, max_num_seqs=8, block_size=4)
    answers: dict[str, Answer] = {}
    engine.add_request(make_request(tokenizer, "warm", SYSTEM_PROMPT + " Hi?", max_tokens=2))
    engine.add_request(make_request(tokenizer, "running", "The harbour", max_tokens=12))
    step(engine, answers)
    step(engine, answers)  # "warm" finished: its context is cached
    prompts = {"q0": SYSTEM_PROMPT + " Why?", "q1": SYSTEM_PROMPT + " Where is my parcel?"}
    for request_id, prompt in prompts.items():
        engine.add_request(make_request(tokenizer, request_id, prompt, max_tokens=8))
    hits_before = engine.prefix_caching.num_hit_tokens
    forwards = Forwards(model)
    try:
        step(engine, answers)
    finally:
        forwards.handle.remove()

    assert forwards.count == 1
    assert engine.prefix_caching.num_hit_tokens > hits_before
    assert [len(answers[r].token_ids) for r in ("running", "q0", "q1")] == [3, 1, 1]
    while engine.has_work:
        step(engine, answers)
    for request_id, prompt in {**prompts, "running": "The harbour"}.items():
        expected = generate_greedy(model, tokenizer, prompt, len(answers[request_id].token_ids))
        assert answers[request_id].token_ids == expected, request_id


def test_a_failing_mixed_forward_fails_the_batch_and_the_newcomers_and_the_engine_goes_on(
    model, tokenizer, monkeypatch
):
    engine = BatchedEngine(model, tokenizer, max_num_seqs=4)
    answers: dict[str, Answer] = {}
    engine.add_request(make_request(tokenizer, "running", "Hello", max_tokens=8))
    step(engine, answers)
    engine.add_request(make_request(tokenizer, "joining", "The harbour", max_tokens=8))
    run_model = engine.runner.run_model

    def fail_once(*args, **kwargs):
        monkeypatch.setattr(engine.runner, "run_model", run_model)
        raise RuntimeError("out of memory")

    monkeypatch.setattr(engine.runner, "run_model", fail_once)
    failed = {d.request_id: d for d in engine.step()}

    assert set(failed) == {"running", "joining"}
    assert all(
        (d.finish_reason, d.error_code) == (pb.FINISH_REASON_ERROR, pb.WORKER_FAILED)
        and "out of memory" in d.error_message
        for d in failed.values()
    )
    assert engine.runner.batch.num_rows == 0 and engine.num_request_blocks == 0
    engine.add_request(make_request(tokenizer, "next", "In the library", max_tokens=6))
    step(engine, answers)
    engine.add_request(make_request(tokenizer, "after", "Hello", max_tokens=6))  # joins "next"
    while engine.has_work:
        step(engine, answers)
    assert answers["next"].token_ids == generate_greedy(model, tokenizer, "In the library", 6)
    assert answers["after"].token_ids == generate_greedy(model, tokenizer, "Hello", 6)
