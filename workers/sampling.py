"""Choosing the next token from one request's logits."""

from __future__ import annotations

import random

import torch

from workers.requests import SamplingOptions


def make_generator(options: SamplingOptions, device: torch.device) -> torch.Generator | None:
    """A per-request RNG (None for greedy): seeded runs repeat exactly."""
    if options.temperature <= 0:
        return None
    seed = options.seed if options.seed is not None else random.randrange(2**63)
    return torch.Generator(device=device).manual_seed(seed)


def sample_next_token(
    logits: torch.Tensor, options: SamplingOptions, generator: torch.Generator | None
) -> int:
    """Greedy for temperature 0 (argmax, ties to the lowest id, as `generate` does)."""
    if options.temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits.float() / options.temperature
    if 0 < options.top_k < logits.numel():
        kth_largest = torch.topk(logits, options.top_k).values[-1]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if options.top_p < 1.0:
        logits = _keep_top_p(logits, options.top_p)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def _keep_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches top_p."""
    sorted_logits, order = torch.sort(logits, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    sorted_logits[mass_before >= top_p] = float("-inf")  # the first token always stays
    return torch.full_like(logits, float("-inf")).scatter(0, order, sorted_logits)
