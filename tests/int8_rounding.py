"""The int8 rounding of `small_linear_int8`'s input rows, in plain torch, for tests to
compare the kernel with."""

from __future__ import annotations

import torch


def rounded_per_block(hidden: torch.Tensor, block: int = 32) -> torch.Tensor:
    """The input as `small_linear_int8` computes with it: each block of 32 values rounded to
    int8 with the block's largest |x| / 127 as its scale (a last block may be shorter)."""
    blocks = []
    for start in range(0, hidden.shape[-1], block):
        values = hidden[..., start : start + block]
        scale = values.abs().amax(dim=-1, keepdim=True) / 127
        inverse = torch.where(scale > 0, 1 / scale, torch.zeros_like(scale))
        blocks.append((values * inverse).round() * scale)
    return torch.cat(blocks, dim=-1)
