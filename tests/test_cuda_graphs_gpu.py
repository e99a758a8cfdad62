"""The paged engine's decode steps replayed as CUDA graphs (workers.cuda_graphs; skipped
where there is no GPU): a replay computes what the same step computes eagerly, the engine
with graphs starts like `generate` in bfloat16 and runs every request to its end, and a
larger grant (pools reallocated) drops the graphs and captures them again."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import generate_greedy
from test_batched_engine_gpu import NUM_EXACT_TOKENS, PROMPTS  # bfloat16: the first tokens compared
from transformers import AutoModelForCausalLM

from llmos.wire import pb
from workers.model_loader import prepare_device
from workers.paged_engine import PagedEngine
from workers.paged_runner import PagedRow, PagedRunner
from workers.requests import EngineRequest, SamplingOptions

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def load(tiny_model_dir, dtype: torch.dtype = torch.bfloat16):
    prepare_device(torch.device("cuda"))  # as a worker: cuDNN attention off
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype).to("cuda").eval()


def test_a_replay_computes_what_the_step_computes_eagerly(tiny_model_dir):
    model = load(tiny_model_dir, torch.float32)
    runner = PagedRunner(model, 64, 8, graph_rows=8)
    graphs = runner.graphs
    assert graphs is not None and graphs.is_capturing
    tables = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    prompts = [[5 + row, 17, 42, 7, 99][: 3 + row] for row in range(3)]
    runner.forward([PagedRow(table, 0, prompt) for table, prompt in zip(tables, prompts, strict=True)])
    for step in range(4):
        rows = [
            PagedRow(table, len(prompt) + step, [11 + step])
            for table, prompt in zip(tables, prompts, strict=True)
        ]
        replayed = runner.forward(rows)
        graphs.is_capturing = False
        eager = runner.forward(rows)  # the same keys and values to the same slots
        graphs.is_capturing = True
        torch.testing.assert_close(replayed, eager, rtol=1e-5, atol=1e-5)
    assert graphs.num_captured >= 1 and graphs.num_replayed == 4


def test_the_engine_with_graphs_starts_like_generate_and_ends_every_request(tiny_model_dir, tokenizer):
    model = load(tiny_model_dir)
    engine = PagedEngine(model, tokenizer, max_num_seqs=4, block_size=8, cuda_graphs=True)
    for index, prompt in enumerate(PROMPTS):
        engine.add_request(
            EngineRequest(f"r{index}", tokenizer.encode(prompt), SamplingOptions(max_tokens=16))
        )
    answers: dict[str, list] = {}
    while engine.has_work:
        for delta in engine.step():
            answers.setdefault(delta.request_id, []).append(delta)

    graphs = engine.runner.graphs
    assert graphs is not None and graphs.num_replayed > 0
    for index, prompt in enumerate(PROMPTS):
        deltas = answers[f"r{index}"]
        token_ids = [t for d in deltas for t in d.token_ids]
        expected = generate_greedy(model, tokenizer, prompt, 16)
        assert token_ids[:NUM_EXACT_TOKENS] == expected[:NUM_EXACT_TOKENS]
        assert deltas[-1].is_finished and deltas[-1].finish_reason in (
            pb.FINISH_REASON_LENGTH,
            pb.FINISH_REASON_EOS,
        )


def test_reallocated_pools_drop_the_graphs_and_capture_them_again(tiny_model_dir):
    model = load(tiny_model_dir, torch.float32)
    runner = PagedRunner(model, 4, 8, graph_rows=4)
    graphs = runner.graphs
    assert graphs is not None
    runner.forward([PagedRow([0, 1], 0, [5, 6, 7])])
    first = runner.forward([PagedRow([0, 1], 3, [8])])
    assert graphs.num_captured == 1
    runner.cache.blocks.resize(16)
    runner.forward([PagedRow([12], 0, [5, 6, 7])])  # a block past the old pools: they grow (a copy)
    again = runner.forward([PagedRow([12], 3, [8])])
    assert graphs.num_captured == 2
    torch.testing.assert_close(again, first, rtol=1e-5, atol=1e-5)  # the same context, elsewhere
