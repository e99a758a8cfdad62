"""`--kv-cache-dtype float16|bfloat16` (workers.kv_dtype): a float32 model's keys and
values stored rounded once in 16 bits, read back to float32 by the attention. The
kernels compute exactly what float32 pools holding the rounded values give; the paged
engine on such a cache answers as `generate` on the test model and holds half the KV
bytes; engines, workers and the bench that cannot run it refuse it in one line."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from e2e_helpers import Reference, stream_answer
from engine_helpers import Answer, make_prompts, make_request, run_engine_to_end
from stack import Stack
from test_bench_engine import TINY_ARGS, run_bench
from test_paged_engine import assert_greedy, check_invariants

from llmos.cli import cli
from workers import cpu_kernels, paged_ops
from workers.config import WorkerConfig
from workers.engine_factory import make_engine
from workers.kv_dtype import resolve_kv_cache_dtype
from workers.model_loader import load_model
from workers.paged_engine import PagedEngine

torch.set_num_threads(1)

needs_kernels = pytest.mark.skipif(not cpu_kernels.has_kernels(), reason="the CPU kernels do not build here")
NARROW = [torch.float16, torch.bfloat16]
BLOCK_SIZE = 4


def paged_inputs(seed: int = 0):
    """Two rows' pools (float32), a decode token of each and a prefill chunk of the second."""
    generator = torch.Generator().manual_seed(seed)
    kv_heads, heads, head_dim, num_blocks = 2, 4, 16, 6
    key_pool = torch.randn(num_blocks, kv_heads, BLOCK_SIZE, head_dim, generator=generator)
    value_pool = torch.randn(num_blocks, kv_heads, BLOCK_SIZE, head_dim, generator=generator)
    query = torch.randn(5, heads, head_dim, generator=generator)
    tables = torch.tensor([[0, 2, 4], [1, 3, 5]], dtype=torch.int32)
    token_rows = torch.tensor([0, 1, 1, 1, 1], dtype=torch.int32)
    context_lens = torch.tensor([11, 9, 10, 11, 12], dtype=torch.int32)
    return query, key_pool, value_pool, tables, token_rows, context_lens


@needs_kernels
@pytest.mark.parametrize("dtype", NARROW)
def test_attention_over_narrow_pools_equals_float32_pools_holding_the_rounded_values(dtype):
    query, key_pool, value_pool, tables, token_rows, context_lens = paged_inputs()
    narrow_keys, narrow_values = key_pool.to(dtype), value_pool.to(dtype)

    got = paged_ops.paged_attention(query, narrow_keys, narrow_values, tables, token_rows, context_lens, 0.25)
    rounded = paged_ops.paged_attention(
        query, narrow_keys.float(), narrow_values.float(), tables, token_rows, context_lens, 0.25
    )
    plain = paged_ops.gathered_attention(
        query, narrow_keys, narrow_values, tables, token_rows, context_lens, 0.25
    )

    assert got.dtype == torch.float32
    torch.testing.assert_close(got, rounded, rtol=1e-6, atol=1e-6)  # the same sums, up to their order
    torch.testing.assert_close(plain, got, rtol=1e-5, atol=1e-5)  # the plain-torch path agrees


@needs_kernels
@pytest.mark.parametrize("dtype", NARROW)
def test_stores_round_each_key_and_value_once(dtype):
    keys, values = torch.randn(3, 2, 16), torch.randn(3, 2, 16)
    slots = torch.tensor([0, 5, 9])
    key_pool, value_pool = (
        torch.zeros(3, 2, BLOCK_SIZE, 16, dtype=dtype),
        torch.zeros(3, 2, BLOCK_SIZE, 16, dtype=dtype),
    )
    paged_ops.store_kv(key_pool, value_pool, keys, values, slots)
    blocks, offsets = slots // BLOCK_SIZE, slots % BLOCK_SIZE
    assert torch.equal(key_pool[blocks, :, offsets], keys.to(dtype))
    assert torch.equal(value_pool[blocks, :, offsets], values.to(dtype))

    # the direct forward's store: rotated in float32, then rounded once
    query, cos, sin = torch.randn(3, 4, 16), torch.randn(3, 16), torch.randn(3, 16)
    wide_query = query.clone()
    wide_pools = torch.zeros(3, 2, BLOCK_SIZE, 16), torch.zeros(3, 2, BLOCK_SIZE, 16)
    torch.ops.llmos_cpu.rope_store(wide_query, keys, values, cos, sin, *wide_pools, slots)
    narrow_pools = (
        torch.zeros(3, 2, BLOCK_SIZE, 16, dtype=dtype),
        torch.zeros(3, 2, BLOCK_SIZE, 16, dtype=dtype),
    )
    torch.ops.llmos_cpu.rope_store(query, keys, values, cos, sin, *narrow_pools, slots)
    assert torch.equal(query, wide_query)
    for narrow, wide in zip(narrow_pools, wide_pools, strict=True):
        assert torch.equal(narrow, wide.to(dtype))


@needs_kernels
def test_mismatched_pools_are_refused_with_an_error():
    query, key_pool, value_pool, tables, token_rows, context_lens = paged_inputs()
    with pytest.raises(RuntimeError, match="pools must have one dtype"):
        paged_ops.paged_attention(
            query, key_pool.half(), value_pool.bfloat16(), tables, token_rows, context_lens, 0.25
        )
    with pytest.raises(RuntimeError, match="float16 or bfloat16 for a float32 query"):
        paged_ops.paged_attention(
            query.half(), key_pool.bfloat16(), value_pool.bfloat16(), tables, token_rows, context_lens, 0.25
        )


@needs_kernels
@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_the_paged_engine_on_a_narrow_cache_answers_as_generate_with_half_the_kv_bytes(
    model, tokenizer, name
):
    prompts = {f"r{i}": prompt for i, prompt in enumerate(make_prompts(5, seed=3, max_words=20))}
    max_tokens = dict.fromkeys(prompts, 10)
    requests = {rid: make_request(tokenizer, rid, prompt, max_tokens=10) for rid, prompt in prompts.items()}
    usages = {}
    for kv_cache_dtype in ("auto", name):
        engine = PagedEngine(
            model,
            tokenizer,
            max_num_seqs=4,
            num_blocks=64,
            block_size=BLOCK_SIZE,
            kv_cache_dtype=kv_cache_dtype,
        )
        for request in requests.values():
            engine.add_request(request)
        answers: dict[str, Answer] = {}
        for delta in engine.step():  # every prompt prefilled: as many live tokens on both caches
            answers.setdefault(delta.request_id, Answer()).add(delta)
        usages[kv_cache_dtype] = engine.kv_usage()
        answers = run_engine_to_end(engine, check_invariants, answers=answers)
        assert_greedy(model, tokenizer, answers, prompts, max_tokens)
        requests = {
            rid: make_request(tokenizer, rid, prompt, max_tokens=10) for rid, prompt in prompts.items()
        }

    (wide_bytes, wide_tokens), (narrow_bytes, narrow_tokens) = usages["auto"], usages[name]
    assert narrow_tokens == wide_tokens > 0
    assert narrow_bytes * 2 == wide_bytes


def test_names_and_pairings_it_cannot_run_are_refused():
    assert resolve_kv_cache_dtype("auto", torch.float32) == torch.float32
    assert resolve_kv_cache_dtype("float16", torch.float32) == torch.float16
    assert resolve_kv_cache_dtype("bfloat16", torch.bfloat16) == torch.bfloat16  # as auto
    with pytest.raises(
        ValueError, match="unknown --kv-cache-dtype 'fp8'; use one of auto, float16, bfloat16"
    ):
        resolve_kv_cache_dtype("fp8", torch.float32)
    with pytest.raises(ValueError, match="needs a float32 model"):
        resolve_kv_cache_dtype("float16", torch.bfloat16)


def test_engines_without_a_narrow_cache_refuse_it(model, tokenizer):
    geometry = dict(
        max_num_seqs=2,
        max_model_len=64,
        worker_id="w",
        num_blocks=32,
        block_size=16,
        max_num_batched_tokens=64,
    )
    with pytest.raises(ValueError, match="runs on the paged engine; this worker's is batched"):
        make_engine("batched", model, tokenizer, kv_cache_dtype="float16", **geometry)
    assert isinstance(
        make_engine("paged", model, tokenizer, kv_cache_dtype="float16", **geometry), PagedEngine
    )


def test_a_worker_refuses_an_unknown_kv_cache_dtype_in_one_line(tiny_model_dir):
    config = WorkerConfig(model=str(tiny_model_dir), device="cpu", kv_cache_dtype="fp8")
    with pytest.raises(SystemExit) as refusal:
        load_model(config)
    assert (
        str(refusal.value)
        == "llmos worker: unknown --kv-cache-dtype 'fp8'; use one of auto, float16, bfloat16"
    )


@needs_kernels
def test_the_bench_measures_a_narrow_cache_and_reports_its_bytes_a_token():
    wide = run_bench("--engine", "paged", "--skip-baselines", "--poisson-seconds", "0", "--json-only")
    narrow = run_bench(
        "--engine",
        "paged",
        "--kv-cache-dtype",
        "float16",
        "--skip-baselines",
        "--poisson-seconds",
        "0",
        "--json-only",
    )

    assert (wide["kv_cache_dtype"], narrow["kv_cache_dtype"]) == ("float32", "float16")
    assert narrow["kv_bytes_per_token"] * 2 == wide["kv_bytes_per_token"]
    for run in narrow["llmos"]:
        assert run["kv_bytes_per_live_token"] >= narrow["kv_bytes_per_token"] > 0
    result = CliRunner().invoke(cli, [*TINY_ARGS, "--engine", "batched", "--kv-cache-dtype", "float16"])
    assert result.exit_code == 2 and "runs on the paged engine" in result.output


def test_a_narrow_cache_holds_twice_the_tokens_in_the_workers_budget(tiny_model_dir):
    wide = load_model(WorkerConfig(model=str(tiny_model_dir), device="cpu"))
    narrow = load_model(WorkerConfig(model=str(tiny_model_dir), device="cpu", kv_cache_dtype="bfloat16"))
    assert narrow.kv_capacity_tokens == 2 * wide.kv_capacity_tokens


@needs_kernels
@pytest.mark.e2e
def test_a_worker_started_with_a_float16_cache_streams_generates_answer(tiny_model_dir, tmp_path):
    worker_args = ("--engine", "paged", "--kv-cache-dtype", "float16")
    prompt = "Customer service: my order is late"
    with Stack(tiny_model_dir, tmp_path, num_workers=1, worker_args=worker_args) as stack:
        with stack.client() as client:
            answer = stream_answer(client, prompt, max_tokens=16)
    answer.assert_whole()
    assert answer.token_ids == Reference(tiny_model_dir).greedy(prompt, 16)
