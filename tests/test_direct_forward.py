"""The paged runner's direct forward of Llama-style float32 models on CPU
(workers.direct_forward, workers/kernels/decode_ops.cpp): its logits equal transformers'
forward of the same packed rows within float32 rounding, for every family it takes; the
others, and machines without the kernels, run transformers' forward; its operators
refuse bad arguments with an error, not a crash."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from engine_helpers import tiny_random_model
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

from workers import cpu_kernels, direct_forward
from workers.paged_runner import PagedRow, PagedRunner
from workers.quantization import quantize_int8

torch.set_num_threads(1)

pytestmark = pytest.mark.skipif(not cpu_kernels.has_kernels(), reason="the CPU kernels do not build here")

BLOCK_SIZE = 4


def runners(model) -> tuple[PagedRunner, PagedRunner]:
    """(a runner on the direct forward, one on transformers' forward), each its own cache."""
    direct, plain = PagedRunner(model, 32, BLOCK_SIZE), PagedRunner(model, 32, BLOCK_SIZE)
    assert direct.direct is not None
    plain.direct = None
    return direct, plain


def packed_steps(vocab_size: int) -> list[list[PagedRow]]:
    """Three forwards of two requests: a prefill; a decode beside a prefill chunk that
    starts past the other's blocks; two decodes."""
    first = [(i * 7 + 3) % vocab_size for i in range(10)]
    second = [(i * 5 + 1) % vocab_size for i in range(9)]
    first_blocks, second_blocks = [0, 1, 2, 3], [4, 5, 6]
    return [
        [PagedRow(first_blocks, 0, first)],
        [PagedRow(first_blocks, 10, [11 % vocab_size]), PagedRow(second_blocks, 0, second[:6])],
        [PagedRow(first_blocks, 11, [12 % vocab_size]), PagedRow(second_blocks, 6, second[6:])],
        [PagedRow(first_blocks, 12, [13 % vocab_size]), PagedRow(second_blocks, 9, [2])],
    ]


def assert_same_logits(model) -> None:
    direct, plain = runners(model)
    for rows in packed_steps(model.config.vocab_size):
        expected, got = plain.forward(rows), direct.forward(rows)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_llama_logits_equal_transformers_forward_for_mixed_rows(model):
    assert_same_logits(model)


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_other_llama_style_families_equal_transformers_forward(tokenizer, family):
    # Qwen2: biases on the query, key and value; Qwen3: an RMSNorm on each head's query and key
    assert_same_logits(tiny_random_model(family, tokenizer, "sdpa"))


def test_int8_linears_run_their_own_forward_inside_the_direct_one(model):
    quantized = copy.deepcopy(model)
    assert quantize_int8(quantized) > 0
    assert_same_logits(quantized)


@pytest.mark.parametrize("family", ["gpt2", "phi3"])
def test_other_families_run_transformers_forward(tokenizer, family):
    model = tiny_random_model(family, tokenizer, "sdpa")
    assert PagedRunner(model, 8, BLOCK_SIZE).direct is None


def test_bfloat16_and_machines_without_kernels_run_transformers_forward(model, monkeypatch):
    assert PagedRunner(copy.deepcopy(model).to(torch.bfloat16), 8, BLOCK_SIZE).direct is None
    monkeypatch.setattr(direct_forward.cpu_kernels, "has_kernels", lambda: False)
    assert PagedRunner(model, 8, BLOCK_SIZE).direct is None


# ---------------------------------------------------------------- the operators


def test_rms_norm_equals_transformers_and_add_rms_norm_keeps_the_sum():
    norm = LlamaRMSNorm(48, eps=1e-5)
    norm.weight.data = torch.randn(48)
    hidden, delta = torch.randn(5, 48), torch.randn(5, 48)

    torch.testing.assert_close(torch.ops.llmos_cpu.rms_norm(hidden, norm.weight, 1e-5), norm(hidden))
    expected_sum = hidden + delta
    normed = torch.ops.llmos_cpu.add_rms_norm(hidden, delta, norm.weight, 1e-5)
    torch.testing.assert_close(hidden, expected_sum)  # in place: the residual stream
    torch.testing.assert_close(normed, norm(expected_sum))


def test_rope_store_rotates_the_query_and_stores_the_rotated_key_and_the_value():
    tokens, heads, kv_heads, head_dim, num_blocks = 3, 4, 2, 8, 4
    query, key, value = (torch.randn(tokens, n, head_dim) for n in (heads, kv_heads, kv_heads))
    angles = torch.randn(tokens, head_dim // 2).repeat(1, 2)
    cos, sin = angles.cos(), angles.sin()
    slots = torch.tensor([5, 6, 13])
    key_pool = torch.zeros(num_blocks, kv_heads, BLOCK_SIZE, head_dim)
    value_pool = torch.zeros_like(key_pool)
    # transformers' rotation on [batch, heads, tokens, head_dim]; the plain-torch store
    want_query, want_key = apply_rotary_pos_emb(
        query.transpose(0, 1)[None], key.transpose(0, 1)[None], cos[None], sin[None]
    )
    want_keys, want_values = torch.zeros_like(key_pool), torch.zeros_like(value_pool)
    blocks, offsets = slots // BLOCK_SIZE, slots % BLOCK_SIZE
    want_keys[blocks, :, offsets] = want_key[0].transpose(0, 1)
    want_values[blocks, :, offsets] = value

    torch.ops.llmos_cpu.rope_store(query, key, value, cos, sin, key_pool, value_pool, slots)

    torch.testing.assert_close(query, want_query[0].transpose(0, 1))
    torch.testing.assert_close(key_pool, want_keys)
    torch.testing.assert_close(value_pool, want_values)


@pytest.mark.parametrize(
    "case, message",
    [
        ("float64", "float32"),
        ("slot past the pools", "slot out of the pools"),
        ("odd head_dim", "head_dim"),
        ("strided", "contiguous"),
    ],
)
def test_the_operators_refuse_bad_arguments_with_an_error(case, message):
    query, key, value = torch.randn(2, 2, 8), torch.randn(2, 1, 8), torch.randn(2, 1, 8)
    cos, sin = torch.ones(2, 8), torch.zeros(2, 8)
    pools = torch.zeros(2, 1, BLOCK_SIZE, 8), torch.zeros(2, 1, BLOCK_SIZE, 8)
    slots = torch.tensor([0, 1])
    if case == "float64":
        with pytest.raises(RuntimeError, match=message):
            torch.ops.llmos_cpu.rms_norm(torch.randn(2, 8, dtype=torch.float64), torch.ones(8), 1e-5)
    elif case == "slot past the pools":
        with pytest.raises(RuntimeError, match=message):
            torch.ops.llmos_cpu.rope_store(
                query, key, value, cos, sin, *pools, torch.tensor([0, 2 * BLOCK_SIZE])
            )
    elif case == "odd head_dim":
        odd = torch.randn(2, 1, 7)
        with pytest.raises(RuntimeError, match=message):
            torch.ops.llmos_cpu.rope_store(
                torch.randn(2, 2, 7), odd, odd, torch.ones(2, 7), torch.ones(2, 7), *pools, slots
            )
    else:
        with pytest.raises(RuntimeError, match=message):
            torch.ops.llmos_cpu.add_rms_norm(torch.randn(8, 2).t(), torch.randn(2, 8), torch.ones(8), 1e-5)


def test_the_decode_steps_script_prints_both_sides_and_a_json_line():
    script = Path(__file__).parent.parent / "scripts" / "direct_forward_steps.py"
    result = subprocess.run(
        [sys.executable, str(script), "llama-tiny", "--steps", "2", "--rows", "1,3", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert [run["rows"] for run in summary["runs"]] == [1, 3]
    assert all(run["ratio"] > 0 and run["same_tokens"] for run in summary["runs"])
