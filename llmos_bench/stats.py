"""Figures the engine benchmark reports: latency percentiles, model FLOPs and the matmul peak."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from llmos_bench.percentiles import percentile

CPU_MATMUL_SIZE = 2048  # 17 GFLOP a product: a few tenths of a second on a few cores
CUDA_MATMUL_SIZE = 8192  # 1.1 TFLOP a product: about a millisecond on an H100
MATMUL_MIN_SECONDS = 1.0  # keep multiplying at least this long, report the best product


@dataclass
class RequestTiming:
    """One request's clock readings (time.perf_counter seconds)."""

    arrival_s: float  # when it was due to arrive (the latency clock starts here)
    first_token_s: float = math.nan
    finished_s: float = math.nan
    num_prompt_tokens: int = 0
    num_generated_tokens: int = 0

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.arrival_s

    @property
    def e2e_s(self) -> float:
        return self.finished_s - self.arrival_s

    @property
    def tpot_s(self) -> float:
        """Time per output token after the first (NaN for a one-token request)."""
        if self.num_generated_tokens < 2:
            return math.nan
        return (self.finished_s - self.first_token_s) / (self.num_generated_tokens - 1)


def latency_figures(timings: list[RequestTiming], names: tuple[str, ...]) -> dict[str, float | None]:
    """`{name}_p50_s` and `{name}_p99_s` for each of ttft, tpot, e2e named."""
    figures: dict[str, float | None] = {}
    for name in names:
        values = [getattr(timing, f"{name}_s") for timing in timings]
        figures[f"{name}_p50_s"] = percentile(values, 50)
        figures[f"{name}_p99_s"] = percentile(values, 99)
    return figures


def count_parameters(model: Any) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def model_flops(model: Any, num_prompt_tokens: int, num_generated_tokens: int) -> float:
    """Useful forward FLOPs: 2 per weight of every linear layer per token it passes,
    the output head only for tokens whose logits are needed (one per generated token).

    Attention scores (quadratic in the context) and embedding lookups are left out:
    for short contexts they are a few per cent. Padding and recomputation a system
    does are not useful work, so they do not count."""
    linear_weights = sum(
        module.weight.numel() for module in model.modules() if isinstance(module, torch.nn.Linear)
    )
    head_weights = model.get_output_embeddings().weight.numel()
    body_weights = linear_weights - head_weights
    return 2.0 * (
        body_weights * (num_prompt_tokens + num_generated_tokens) + head_weights * num_generated_tokens
    )


def matmul_peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of the best of repeated large square matmuls: this machine's practical peak."""
    size = CUDA_MATMUL_SIZE if device.type == "cuda" else CPU_MATMUL_SIZE
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    torch.matmul(a, b)  # warm-up: library init, kernel choice
    synchronize(device)
    best_s = math.inf
    started = time.perf_counter()
    while time.perf_counter() - started < MATMUL_MIN_SECONDS:
        product_started = time.perf_counter()
        torch.matmul(a, b)
        synchronize(device)
        best_s = min(best_s, time.perf_counter() - product_started)
    return 2.0 * size**3 / best_s


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_run(figures: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The run with the median output tokens/s (the lower middle one of an even count)."""
    measured = sorted((f for f in figures if f is not None), key=lambda f: f["output_tokens_per_s"])
    return measured[(len(measured) - 1) // 2] if measured else None


def compare_rounds(rounds: list[dict[str, dict[str, Any]]], side: str, against: str) -> dict[str, Any]:
    """Two sides run in turns: each side's median run, and `side`'s output tokens/s over
    `against`'s, from the medians (`ratio`) and in every round (`round_ratios`)."""
    medians = {name: median_run([r[name] for r in rounds]) for name in (side, against)}
    return {
        **medians,
        "ratio": medians[side]["output_tokens_per_s"] / medians[against]["output_tokens_per_s"],
        "round_ratios": [r[side]["output_tokens_per_s"] / r[against]["output_tokens_per_s"] for r in rounds],
    }
