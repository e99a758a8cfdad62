"""The paged KV cache's operations: the C++ kernels and their plain-torch fallback
against attention over each row's context laid out contiguously."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch.nn.functional import scaled_dot_product_attention

from workers import cpu_kernels, paged_ops

needs_kernels = pytest.mark.skipif(not cpu_kernels.has_kernels(), reason="no C++ compiler for the kernels")


def make_pools(num_blocks: int, kv_heads: int, block_size: int, head_dim: int, dtype: torch.dtype):
    generator = torch.Generator().manual_seed(0)
    shape = (num_blocks, kv_heads, block_size, head_dim)
    return (
        torch.randn(shape, generator=generator).to(dtype),
        torch.randn(shape, generator=generator).to(dtype),
    )


def make_tables(row_lengths: list[int], block_size: int, num_blocks: int) -> torch.Tensor:
    """Each row's blocks, scattered over the pool (rows share no block)."""
    max_blocks = max(-(-length // block_size) for length in row_lengths)
    order = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(1))
    assert len(row_lengths) * max_blocks <= num_blocks
    return order[: len(row_lengths) * max_blocks].view(len(row_lengths), max_blocks).int()


def context(pool: torch.Tensor, table: torch.Tensor, length: int) -> torch.Tensor:
    """A row's first `length` tokens, `[kv_heads, length, head_dim]`."""
    positions = torch.arange(length)
    block_size = pool.shape[2]
    return pool[table.long()[positions // block_size], :, positions % block_size].transpose(0, 1)


def reference(query, key_pool, value_pool, tables, token_rows, context_lens, scale):
    out = []
    for token in range(query.shape[0]):
        row, length = int(token_rows[token]), int(context_lens[token])
        keys = context(key_pool, tables[row], length).float()
        values = context(value_pool, tables[row], length).float()
        out.append(
            scaled_dot_product_attention(
                query[token, :, None].float(), keys, values, scale=scale, enable_gqa=True
            )[:, 0]
        )
    return torch.stack(out)


def decodes_and_a_prefill(row_lengths: list[int], num_prefill: int):
    """Each row's last token as a decode, and the last `num_prefill` tokens of row 0
    as a prefill chunk (each seeing the row up to itself)."""
    rows = list(range(len(row_lengths)))
    lens = list(row_lengths)
    last = row_lengths[0]
    rows += [0] * num_prefill
    lens += list(range(last - num_prefill + 1, last + 1))
    return torch.tensor(rows, dtype=torch.int32), torch.tensor(lens, dtype=torch.int32)


@pytest.mark.parametrize(
    ("heads", "kv_heads", "block_size", "dtype", "tolerance"),
    [
        (4, 4, 16, torch.float32, 1e-5),
        (8, 2, 16, torch.float32, 1e-5),  # grouped queries
        (4, 2, 5, torch.float32, 1e-5),  # a block size that divides nothing
        (8, 2, 16, torch.bfloat16, 2e-2),
        (4, 4, 16, torch.float16, 5e-3),
    ],
)
@pytest.mark.parametrize(
    "attend", [pytest.param(paged_ops.paged_attention, marks=needs_kernels), paged_ops.gathered_attention]
)
def test_attention_through_block_tables_equals_attention_over_each_rows_context(
    attend, heads, kv_heads, block_size, dtype, tolerance
):
    row_lengths, head_dim = [37, 1, 16, 80], 32
    key_pool, value_pool = make_pools(64, kv_heads, block_size, head_dim, dtype)
    tables = make_tables(row_lengths, block_size, 64)
    token_rows, context_lens = decodes_and_a_prefill(row_lengths, num_prefill=7)
    query = torch.randn(len(token_rows), heads, head_dim, generator=torch.Generator().manual_seed(2))
    query = query.to(dtype)
    scale = head_dim**-0.5

    out = attend(query, key_pool, value_pool, tables, token_rows, context_lens, scale)

    assert out.shape == query.shape and out.dtype == dtype
    expected = reference(query, key_pool, value_pool, tables, token_rows, context_lens, scale)
    assert (out.float() - expected).abs().max().item() <= tolerance


@needs_kernels
def test_attention_reads_a_query_with_any_strides():
    """The model hands queries as `[1, heads, tokens, head_dim]`: a transposed view."""
    key_pool, value_pool = make_pools(16, 2, 4, 8, torch.float32)
    tables = make_tables([9, 5], 4, 16)
    token_rows, context_lens = (
        torch.tensor([0, 1], dtype=torch.int32),
        torch.tensor([9, 5], dtype=torch.int32),
    )
    query = torch.randn(1, 4, 2, 8)[0].transpose(0, 1)  # [tokens, heads, dim], not contiguous

    out = paged_ops.paged_attention(query, key_pool, value_pool, tables, token_rows, context_lens, 0.3)

    assert torch.allclose(
        out,
        paged_ops.paged_attention(
            query.contiguous(), key_pool, value_pool, tables, token_rows, context_lens, 0.3
        ),
    )


@pytest.mark.parametrize("use_kernels", [pytest.param(True, marks=needs_kernels), False])
def test_store_writes_each_token_at_its_slot(use_kernels, monkeypatch):
    monkeypatch.setattr(paged_ops, "has_kernels", lambda: use_kernels)
    key_pool, value_pool = torch.zeros(6, 2, 4, 3), torch.zeros(6, 2, 4, 3)
    keys = torch.randn(2, 5, 3).transpose(0, 1)  # [tokens, kv_heads, dim] as a strided view
    values = torch.randn(5, 2, 3)
    slots = torch.tensor([0, 5, 23, 8, 9])

    paged_ops.store_kv(key_pool, value_pool, keys, values, slots)

    for token, slot in enumerate(slots.tolist()):
        assert torch.equal(key_pool[slot // 4, :, slot % 4], keys[token])
        assert torch.equal(value_pool[slot // 4, :, slot % 4], values[token])
    assert int((key_pool != 0).any(dim=(1, 3)).sum()) == len(slots)  # nothing else written


@needs_kernels
def test_kernels_refuse_what_would_read_outside_the_pool():
    key_pool, value_pool = make_pools(4, 2, 4, 8, torch.float32)
    query = torch.randn(1, 2, 8)
    one = torch.tensor([0], dtype=torch.int32)
    with pytest.raises(RuntimeError, match="block id out of range"):
        paged_ops.paged_attention(
            query,
            key_pool,
            value_pool,
            torch.tensor([[9]], dtype=torch.int32),
            one,
            torch.tensor([3], dtype=torch.int32),
            1.0,
        )
    with pytest.raises(RuntimeError, match="context length out of range"):
        paged_ops.paged_attention(
            query,
            key_pool,
            value_pool,
            torch.tensor([[1]], dtype=torch.int32),
            one,
            torch.tensor([5], dtype=torch.int32),
            1.0,
        )
    with pytest.raises(RuntimeError, match="slot out of range"):
        paged_ops.store_kv(
            key_pool, value_pool, torch.randn(1, 2, 8), torch.randn(1, 2, 8), torch.tensor([16])
        )
    with pytest.raises(RuntimeError, match="one dtype"):
        paged_ops.paged_attention(
            query.double(), key_pool, value_pool, torch.tensor([[1]], dtype=torch.int32), one, one, 1.0
        )


def kernels_in_a_fresh_process(env: dict[str, str]) -> str:
    code = "from workers import cpu_kernels; print(cpu_kernels.has_kernels())"
    result = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip() + "\n" + result.stderr


def test_the_kernels_can_be_turned_off():
    assert kernels_in_a_fresh_process({cpu_kernels.KERNELS_ENV: "off"}).startswith("False")


def test_a_machine_that_cannot_build_them_falls_back_to_plain_torch_with_a_warning(tmp_path):
    output = kernels_in_a_fresh_process(
        {"CXX": "/bin/false", cpu_kernels.CACHE_ENV: str(tmp_path), cpu_kernels.KERNELS_ENV: ""}
    )
    assert output.startswith("False")
    assert "CPU kernels unavailable" in output
    assert list(tmp_path.iterdir()) == []  # no half-built library left behind
