"""The operations of a paged KV cache: store keys and values in blocks, attend through block tables.

A pool is one layer's keys (or values), `[num_blocks, kv_heads, block_size, head_dim]`;
a slot is `block * block_size + offset`. `paged_attention` runs query tokens of many
rows at once: token t belongs to row `token_rows[t]` and sees that row's first
`context_lens[t]` tokens, which `block_tables[row]` places. Decodes and prefill
chunks go through the same call. The pools hold the activations' dtype, or a float32
model's keys and values in float16 or bfloat16 (`workers.kv_dtype`): the store rounds
them, and attention reads them back to the query's dtype.

On CPU both run in C++ (workers/kernels/paged_attention.cpp, built on first use:
`workers.cpu_kernels`). Where it cannot be built (no compiler) or LLMOS_KERNELS=off,
the same operations run in plain torch: the attention then gathers each token's keys
and values into a padded copy first.
"""

from __future__ import annotations

import torch
from torch.nn.functional import scaled_dot_product_attention

from workers.cpu_kernels import has_kernels

# ---------------------------------------------------------------- the operations


def store_kv(
    key_pool: torch.Tensor,
    value_pool: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    slots: torch.Tensor,
) -> None:
    """Write `keys` and `values` (`[tokens, kv_heads, head_dim]`, any strides) at `slots` (int64)."""
    if key_pool.device.type == "cpu" and has_kernels():
        torch.ops.llmos_paged.store_kv(key_pool, value_pool, keys, values, slots)
        return
    block_size = key_pool.shape[2]
    blocks, offsets = slots // block_size, slots % block_size
    key_pool[blocks, :, offsets] = keys.to(key_pool.dtype)
    value_pool[blocks, :, offsets] = values.to(value_pool.dtype)


def paged_attention(
    query: torch.Tensor,
    key_pool: torch.Tensor,
    value_pool: torch.Tensor,
    block_tables: torch.Tensor,
    token_rows: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    max_context_len: int | None = None,
) -> torch.Tensor:
    """`query` `[tokens, heads, head_dim]` (any strides) against each token's context;
    `[tokens, heads, head_dim]`. `block_tables` `[rows, max_blocks]`, `token_rows` and
    `context_lens` `[tokens]`, all int32; `max_context_len`, the longest of them where
    the caller knows it (else it is read from `context_lens`, which on a GPU waits for
    the device)."""
    if query.device.type == "cpu" and has_kernels():
        return torch.ops.llmos_paged.paged_attention(
            query, key_pool, value_pool, block_tables, token_rows, context_lens, scale
        )
    return gathered_attention(
        query, key_pool, value_pool, block_tables, token_rows, context_lens, scale, max_context_len
    )


def gathered_attention(
    query: torch.Tensor,
    key_pool: torch.Tensor,
    value_pool: torch.Tensor,
    block_tables: torch.Tensor,
    token_rows: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    max_context_len: int | None = None,
) -> torch.Tensor:
    """`paged_attention` in plain torch: each token's context gathered into a padded copy
    `[tokens, kv_heads, longest, head_dim]`, then one masked attention."""
    block_size = key_pool.shape[2]
    longest = max_context_len if max_context_len is not None else int(context_lens.max())
    positions = torch.arange(longest, device=query.device)
    blocks = block_tables[token_rows.long()][:, positions // block_size]  # [tokens, longest]
    offsets = (positions % block_size).expand_as(blocks)
    # [tokens, kv_heads, longest, head_dim], in the query's dtype (the pools' may be narrower)
    keys = key_pool[blocks, :, offsets].transpose(1, 2).to(query.dtype)
    values = value_pool[blocks, :, offsets].transpose(1, 2).to(query.dtype)
    mask = (positions[None, :] < context_lens[:, None])[:, None, None, :]
    # past a context's end, the slots may never have been written (garbage, even NaN): zeros
    keys = torch.where(mask.transpose(2, 3), keys, 0)
    values = torch.where(mask.transpose(2, 3), values, 0)
    out = scaled_dot_product_attention(
        query.unsqueeze(2), keys, values, attn_mask=mask, scale=scale, enable_gqa=True
    )
    return out.squeeze(2)
