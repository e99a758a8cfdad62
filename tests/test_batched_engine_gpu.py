"""The batched engine on CUDA in bfloat16 and float16, and the paged one through its
plain-torch attention (skipped where there is no GPU).

Half precision rounds differently in a padded batch than in one sequence, so
these tests ask for the first tokens to equal `generate` in the same dtype and
for every request to run, stream token by token and end, not for whole answers.
"""

from __future__ import annotations

import pytest
import torch
from engine_helpers import generate_greedy
from transformers import AutoModelForCausalLM

from llmos.wire import pb
from workers.batched_engine import BatchedEngine
from workers.paged_engine import PagedEngine
from workers.requests import EngineRequest, SamplingOptions

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

PROMPTS = [
    "Hello",
    "The harbour was quiet before dawn.",
    "To bake a simple loaf of bread, mix five hundred grams of flour with salt and yeast.",
    "Zoë read a novel about a café in Paris; " * 6,
]
NUM_EXACT_TOKENS = 4  # half precision: only the first tokens are compared exactly


def load(tiny_model_dir, dtype: torch.dtype):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype).to("cuda").eval()


def run_to_end(engine: BatchedEngine) -> dict[str, list]:
    deltas: dict[str, list] = {}
    while engine.has_work:
        for delta in engine.step():
            deltas.setdefault(delta.request_id, []).append(delta)
        assert engine.budget.num_used_blocks <= engine.budget.num_blocks
    return deltas


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_batch_streams_and_starts_like_generate(tiny_model_dir, tokenizer, dtype):
    model = load(tiny_model_dir, dtype)
    engine = BatchedEngine(model, tokenizer, max_num_seqs=4, max_num_batched_tokens=64)
    for index, prompt in enumerate(PROMPTS):
        engine.add_request(
            EngineRequest(f"r{index}", tokenizer.encode(prompt), SamplingOptions(max_tokens=16))
        )

    answers = run_to_end(engine)

    assert engine.num_cached_tokens == 0 and engine.num_request_blocks == 0
    for index, prompt in enumerate(PROMPTS):
        deltas = answers[f"r{index}"]
        token_ids = [t for d in deltas for t in d.token_ids]
        expected = generate_greedy(model, tokenizer, prompt, 16)
        assert token_ids[:NUM_EXACT_TOKENS] == expected[:NUM_EXACT_TOKENS]
        assert all(len(d.token_ids) == 1 for d in deltas)
        assert deltas[-1].is_finished and deltas[-1].finish_reason in (
            pb.FINISH_REASON_LENGTH,
            pb.FINISH_REASON_EOS,
        )


def test_cuda_preemption_by_recompute_keeps_the_budget_and_seeded_sampling_runs(tiny_model_dir, tokenizer):
    model = load(tiny_model_dir, torch.bfloat16)
    engine = BatchedEngine(model, tokenizer, max_num_seqs=4, num_blocks=12, block_size=8)
    for index, prompt in enumerate(PROMPTS[:3]):
        engine.add_request(
            EngineRequest(
                f"r{index}",
                tokenizer.encode(prompt),
                SamplingOptions(max_tokens=24, temperature=0.8, seed=index),
            )
        )

    answers = run_to_end(engine)

    assert set(answers) == {"r0", "r1", "r2"}
    for deltas in answers.values():
        assert deltas[-1].is_finished and deltas[-1].finish_reason != pb.FINISH_REASON_ERROR
    assert engine.num_request_blocks == 0


def test_cuda_prefix_cache_is_reused_and_starts_like_generate(tiny_model_dir, tokenizer):
    model = load(tiny_model_dir, torch.bfloat16)
    engine = BatchedEngine(model, tokenizer, max_num_seqs=4, block_size=8)
    shared = PROMPTS[3]  # a long start that later prompts share
    engine.add_request(
        EngineRequest("first", tokenizer.encode(shared + " First?"), SamplingOptions(max_tokens=4))
    )
    run_to_end(engine)
    prompt = shared + " And the second question?"
    engine.add_request(EngineRequest("second", tokenizer.encode(prompt), SamplingOptions(max_tokens=8)))

    answers = run_to_end(engine)

    assert engine.prefix_caching.num_hit_tokens >= len(tokenizer.encode(shared)) // 8 * 8 - 8
    token_ids = [t for d in answers["second"] for t in d.token_ids]
    assert token_ids[:NUM_EXACT_TOKENS] == generate_greedy(model, tokenizer, prompt, 8)[:NUM_EXACT_TOKENS]
    assert engine.num_request_blocks == 0
    assert engine.num_prefix_cache_blocks == engine.prefix_caching.num_cached_blocks


def test_loading_on_cuda_turns_cudnn_attention_off():
    """cuDNN attention builds a plan per shape, and decode changes shape every step."""
    from workers.config import WorkerConfig
    from workers.model_loader import load_model

    loaded = load_model(WorkerConfig(model="dummy:llama-tiny", device="cuda"))
    assert loaded.device.type == "cuda"
    assert not torch.backends.cuda.cudnn_sdp_enabled()


def test_cuda_newcomers_join_a_running_batch_in_one_forward_and_start_like_generate(
    tiny_model_dir, tokenizer
):
    model = load(tiny_model_dir, torch.bfloat16)
    engine = BatchedEngine(model, tokenizer, max_num_seqs=4)
    assert engine.runner.supports_mixed_steps
    forwards = []
    handle = model.register_forward_hook(lambda *args: forwards.append(1))
    answers: dict[str, list] = {}
    try:
        for index, prompt in enumerate(PROMPTS):  # one joins at every step
            engine.add_request(
                EngineRequest(f"r{index}", tokenizer.encode(prompt), SamplingOptions(max_tokens=12))
            )
            before = len(forwards)
            for delta in engine.step():
                answers.setdefault(delta.request_id, []).append(delta)
            assert len(forwards) - before == 1
        while engine.has_work:
            for delta in engine.step():
                answers.setdefault(delta.request_id, []).append(delta)
    finally:
        handle.remove()

    for index, prompt in enumerate(PROMPTS):
        token_ids = [t for d in answers[f"r{index}"] for t in d.token_ids]
        expected = generate_greedy(model, tokenizer, prompt, 12)
        assert token_ids[:NUM_EXACT_TOKENS] == expected[:NUM_EXACT_TOKENS]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_paged_engine_runs_on_cuda_through_its_plain_torch_attention(tiny_model_dir, tokenizer, dtype):
    """No CUDA kernel reads the blocks yet (`--engine auto` keeps GPUs on the batched
    engine): the gathered attention must still give what `generate` gives."""
    model = load(tiny_model_dir, dtype)
    engine = PagedEngine(model, tokenizer, max_num_seqs=4, block_size=8, max_num_batched_tokens=64)
    for index, prompt in enumerate(PROMPTS):
        engine.add_request(
            EngineRequest(f"r{index}", tokenizer.encode(prompt), SamplingOptions(max_tokens=16))
        )

    answers: dict[str, list] = {}
    while engine.has_work:
        for delta in engine.step():
            answers.setdefault(delta.request_id, []).append(delta)
        assert engine.budget.num_request_blocks <= engine.budget.num_blocks

    assert engine.num_cached_tokens == 0 and engine.num_request_blocks == 0
    for index, prompt in enumerate(PROMPTS):
        token_ids = [t for d in answers[f"r{index}"] for t in d.token_ids]
        expected = generate_greedy(model, tokenizer, prompt, 16)
        assert token_ids[:NUM_EXACT_TOKENS] == expected[:NUM_EXACT_TOKENS]
        assert answers[f"r{index}"][-1].is_finished
