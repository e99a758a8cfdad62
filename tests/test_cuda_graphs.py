"""The paged runner's decode steps on static buffers (workers.cuda_graphs), run eagerly on
CPU: the same code a CUDA graph captures. Their logits equal transformers' forward of the
same rows for every family they take, whatever bucket the step pads to; the padded rows
and the table ends touch only the scratch block; prefills and mixed steps run the regular
forward; other families and int8 linears get no graphs. The CUDA capture itself is tested
in tests/test_cuda_graphs_gpu.py (gpu-marked)."""

from __future__ import annotations

import copy

import pytest
import torch
from click.testing import CliRunner
from engine_helpers import tiny_random_model
from test_bench_engine import TINY_ARGS

from llmos.cli import cli
from workers.config import WorkerConfig
from workers.cuda_graphs import MAX_GRAPH_ROW_TOKENS, blocks_bucket, row_buckets
from workers.engine_factory import make_engine
from workers.model_loader import load_model
from workers.paged_runner import PagedRow, PagedRunner
from workers.quantization import quantize_int8

torch.set_num_threads(1)

BLOCK_SIZE = 4
NUM_BLOCKS = 64


def runners(model, graph_rows: int = 8) -> tuple[PagedRunner, PagedRunner]:
    """(a runner whose decodes run on static buffers, one on transformers' forward)."""
    static = PagedRunner(model, NUM_BLOCKS, BLOCK_SIZE, graph_rows=graph_rows)
    plain = PagedRunner(model, NUM_BLOCKS, BLOCK_SIZE)
    assert static.graphs is not None
    plain.direct = None
    return static, plain


def prompts(num_rows: int, vocab_size: int) -> list[list[int]]:
    """Prompts of different lengths (3 to 3 + 4 * (rows - 1) tokens), so rows span 1 to several blocks."""
    return [[(row * 31 + i * 7 + 1) % vocab_size for i in range(3 + 4 * row)] for row in range(num_rows)]


def decode_both(model, num_rows: int, num_steps: int, graph_rows: int = 8) -> tuple[PagedRunner, list]:
    """Prefill `num_rows` prompts in both runners, then decode `num_steps` tokens a row in
    lockstep, comparing each step's logits. The static runner and each step's rows."""
    static, plain = runners(model, graph_rows)
    tables = [list(range(row * 8, row * 8 + 8)) for row in range(num_rows)]
    rows = [PagedRow(table, 0, prompt) for table, prompt in zip(tables, prompts(num_rows, 1000), strict=True)]
    tokens = [[int(token)] for token in plain.forward(rows).argmax(-1)]
    assert torch.equal(static.forward(rows).argmax(-1), plain.forward(rows).argmax(-1))
    lengths = [len(row.token_ids) for row in rows]
    steps = []
    for step in range(num_steps):
        rows = [
            PagedRow(table, length + step, row_tokens[-1:])
            for table, length, row_tokens in zip(tables, lengths, tokens, strict=True)
        ]
        expected, got = plain.forward(rows), static.forward(rows)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        assert torch.equal(got.argmax(-1), expected.argmax(-1))
        for row_tokens, token in zip(tokens, expected.argmax(-1), strict=True):
            row_tokens.append(int(token))
        steps.append(rows)
    return static, steps


@pytest.mark.parametrize("num_rows", [1, 3, 5])
def test_decode_logits_equal_transformers_forward_in_every_bucket(model, num_rows):
    # 3 rows pad to 4, 5 to 8; the rows' contexts grow across blocks buckets 1 to 8
    static, _ = decode_both(model, num_rows, num_steps=6)
    assert static.graphs is not None and static.graphs.is_capturing is False


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "mistral"])
def test_other_llama_style_families_decode_alike(tokenizer, family):
    # Qwen2: biases on the query, key and value; Qwen3: an RMSNorm on each head's query and
    # key; Mistral: the Llama layer (its window, 16, is longer than these contexts)
    decode_both(tiny_random_model(family, tokenizer, "sdpa"), 2, num_steps=4)


def test_a_step_past_the_largest_bucket_runs_eagerly_on_its_own_shape(model):
    static, _ = decode_both(model, 3, num_steps=2, graph_rows=2)
    assert static.graphs is not None and static.graphs.buckets == [1, 2]


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit: unwritten pool memory is whatever was there, NaNs too (never equal)."""
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def test_padded_rows_and_table_ends_write_only_the_scratch_block(model):
    static, _ = runners(model)
    prompt = list(range(1, 7))
    static.forward([PagedRow([5, 9], 0, prompt)])
    pools = static.cache.paged_layers[0]
    keys, values = pools.keys.clone(), pools.values.clone()
    static.forward([PagedRow([5, 9], 6, [7]), PagedRow([11], 0, [3])])  # a decode and a one-token prefill
    static.forward([PagedRow([5, 9], 7, [8]), PagedRow([11], 1, [4]), PagedRow([12], 0, [5])])  # pads to 4
    written = {(5, 0), (5, 1), (5, 2), (5, 3), (9, 0), (9, 1), (9, 2), (9, 3), (11, 0), (11, 1), (12, 0)}
    scratch = static.cache.scratch_block_id
    for block in range(static.cache.num_pool_blocks):
        for offset in range(BLOCK_SIZE):
            if (block, offset) in written or block == scratch:
                continue
            assert same_bits(pools.keys[block, :, offset], keys[block, :, offset]), (block, offset)
            assert same_bits(pools.values[block, :, offset], values[block, :, offset]), (block, offset)


def test_prefills_and_mixed_steps_run_the_regular_forward(model):
    static, _ = runners(model)
    graphs = static.graphs
    assert graphs is not None
    calls = []
    original = graphs.decode
    graphs.decode = lambda cache, buffers: (
        calls.append(buffers.token_ids.shape[0]) or original(cache, buffers)
    )
    static.forward([PagedRow([0, 1], 0, [1, 2, 3])])  # a prefill
    static.forward([PagedRow([0, 1], 3, [4]), PagedRow([2], 0, [5, 6])])  # a decode beside a prefill
    assert calls == []
    static.forward([PagedRow([0, 1], 4, [7]), PagedRow([2], 2, [8])])  # two decodes
    assert calls == [2]


def test_other_families_and_int8_linears_get_no_graphs(model, tokenizer):
    for family in ("gpt2", "phi3"):
        assert (
            PagedRunner(tiny_random_model(family, tokenizer, "sdpa"), 8, BLOCK_SIZE, graph_rows=8).graphs
            is None
        )
    quantized = copy.deepcopy(model)
    assert quantize_int8(quantized) > 0
    assert PagedRunner(quantized, 8, BLOCK_SIZE, graph_rows=8).graphs is None
    assert PagedRunner(model, 8, BLOCK_SIZE).graphs is None  # graph_rows 0: off


def test_buckets_are_vllms_row_counts_and_powers_of_two_of_blocks():
    assert row_buckets(1) == [1]
    assert row_buckets(3) == [1, 2, 4]
    assert row_buckets(32) == [1, 2, 4, 8, 16, 24, 32]
    assert row_buckets(33) == [1, 2, 4, 8, 16, 24, 32, 40]
    assert [blocks_bucket(n) for n in (1, 2, 3, 4, 5, 9)] == [1, 2, 4, 4, 8, 16]


def test_cuda_graphs_are_refused_off_cuda_and_outside_the_paged_engine(model, tokenizer, tiny_model_dir):
    geometry = dict(max_num_seqs=4, max_model_len=64, worker_id="w", num_blocks=32, block_size=16)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device; the model is on cpu"):
        make_engine("paged", model, tokenizer, cuda_graphs=True, max_num_batched_tokens=64, **geometry)
    with pytest.raises(ValueError, match="CUDA graphs run in the paged engine, not the batched one"):
        make_engine("batched", model, tokenizer, cuda_graphs=True, max_num_batched_tokens=64, **geometry)
    with pytest.raises(SystemExit) as refusal:
        load_model(WorkerConfig(model=str(tiny_model_dir), device="cpu", cuda_graphs=True))
    assert str(refusal.value) == "llmos worker: --cuda-graphs needs a CUDA device, not cpu"
    result = CliRunner().invoke(cli, [*TINY_ARGS, "--cuda-graphs", "--device", "cpu"])
    assert result.exit_code == 2 and "--cuda-graphs runs the paged engine on a CUDA device" in result.output


def test_a_float16_cache_under_float32_weights_decodes_alike(model):
    static = PagedRunner(model, NUM_BLOCKS, BLOCK_SIZE, kv_dtype=torch.float16, graph_rows=4)
    plain = PagedRunner(model, NUM_BLOCKS, BLOCK_SIZE, kv_dtype=torch.float16)
    plain.direct = None
    prompt = [5, 17, 42, 7, 99]
    token = int(plain.forward([PagedRow([0, 1, 2], 0, prompt)]).argmax(-1)[0])
    static.forward([PagedRow([0, 1, 2], 0, prompt)])
    for step in range(4):
        rows = [PagedRow([0, 1, 2], len(prompt) + step, [token])]
        expected, got = plain.forward(rows), static.forward(rows)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        token = int(expected.argmax(-1)[0])
    assert static.cache.paged_layers[0].keys.dtype == torch.float16


def test_long_contexts_of_many_rows_are_not_graphed(model):
    static, _ = runners(model, graph_rows=64)
    graphs = static.graphs
    assert graphs is not None
    most_blocks = MAX_GRAPH_ROW_TOKENS // 64 // BLOCK_SIZE  # 64 rows of 2,048 tokens
    assert graphs.is_graphed(64, most_blocks)
    assert not graphs.is_graphed(64, most_blocks * 2)
    assert not graphs.is_graphed(72, 1)  # past the largest row bucket
