"""How many rows of a float32 product `small_linear` runs, measured on the machine.

`small_linear` (workers/kernels/small_linear.cpp) streams each weight once for all the
rows of a product. At one to three rows it ran about twice oneDNN's speed in every spell
measured, so it always takes them. From four rows on a product does enough arithmetic a
weight that the faster of the two depends on the machine's memory bandwidth against its
arithmetic, and on the development VM that moved by spells: at 8 rows of llama-100m
`small_linear` took 27-34 ms against oneDNN's packed product's 43-49 in slow-memory
spells, and 22 ms against 17 in fast ones (docs/benchmarks.md). So a fixed split loses
up to a quarter of a decode step at 4 to 8 concurrent requests in one spell or the other.

When the engine is built, where the model's plain float32 weights exceed the caches
(CALIBRATION_BYTES), both products run on a sample of them at each row count from
4 to the kernel's most (two alternating rounds, the best of a few passes
each), and `small_linear` takes the rows up to the first count at which oneDNN's product
was faster. The choice is made once a process for the same weights, and logged. Smaller
models keep the kernel's most (their weights sit in cache, where a timing tells nothing
about a decode step's reads from memory). `LLMOS_SMALL_LINEAR_ROWS` pins it: an integer
(at least 3, at most the kernel's most) or `auto`.

Both products compute the same dot products in another order of additions, so the
choice moves only the last bits of rounding, as any two BLAS builds do.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

log = logging.getLogger(__name__)

ROWS_ENV = "LLMOS_SMALL_LINEAR_ROWS"
ALWAYS_ROWS = 3  # small_linear takes products up to this many rows wherever it builds
CALIBRATION_BYTES = 64 << 20  # more than a server CPU's last-level cache share
PASSES = 3  # timed passes a side and round; the best counts
ROUNDS = 2

# (plain float32 weight `small_linear` reads, the weight oneDNN's product reads, bias)
Product = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]


@dataclass(frozen=True)
class RowsChoice:
    rows: int  # small_linear takes products of 1 to `rows` rows
    how: str  # "measured", "pinned" (LLMOS_SMALL_LINEAR_ROWS) or "default" (weights in cache)
    # per row count measured: (rows, small_linear's ms, oneDNN's ms) over the sample
    timings: list[tuple[int, float, float]] = field(default_factory=list)
    sample_bytes: int = 0

    def describe(self) -> str:
        if self.how == "pinned":
            return f"{self.rows} rows ({ROWS_ENV})"
        if self.how == "default":
            return f"{self.rows} rows (the kernel's most: the weights fit in cache)"
        measured = ", ".join(f"{rows}: {small:.1f}/{onednn:.1f} ms" for rows, small, onednn in self.timings)
        return (
            f"{self.rows} rows, measured on {self.sample_bytes / 2**20:.0f} MiB of weights "
            f"(small_linear/oneDNN {measured})"
        )


_choices: dict[tuple, RowsChoice] = {}  # by the sample's weights, once a process


def pinned_rows(most: int) -> int | None:
    """`LLMOS_SMALL_LINEAR_ROWS` as a row count within [ALWAYS_ROWS, most], or None for
    `auto` (or unset)."""
    value = os.environ.get(ROWS_ENV, "auto").strip().lower()
    if value in ("", "auto"):
        return None
    try:
        rows = int(value)
    except ValueError:
        raise ValueError(f"{ROWS_ENV} must be an integer or auto, not {value!r}") from None
    if rows < ALWAYS_ROWS:
        raise ValueError(f"{ROWS_ENV} must be at least {ALWAYS_ROWS}, not {rows}")
    return min(rows, most)


def choose_rows(products: Sequence[Product], most: int) -> RowsChoice:
    """How many rows `small_linear` takes for these products: from ALWAYS_ROWS to `most`."""
    pinned = pinned_rows(most)
    if pinned is not None:
        return RowsChoice(pinned, "pinned")
    sample = sample_of(products)
    sample_bytes = sum(plain.numel() * plain.element_size() for plain, _, _ in sample)
    if most <= ALWAYS_ROWS or sample_bytes < CALIBRATION_BYTES:
        return RowsChoice(most, "default")
    key = (most, *((plain.data_ptr(), onednn is plain) for plain, onednn, _ in sample))
    if key not in _choices:
        _choices[key] = measured_rows(sample, sample_bytes, most)
        log.info("few-row float32 products: small_linear takes %s", _choices[key].describe())
    return _choices[key]


def sample_of(products: Sequence[Product]) -> list[Product]:
    """The first products whose plain weights together reach CALIBRATION_BYTES (all of
    them where they do not): a layer or more, so every shape of a layer is in it."""
    sample: list[Product] = []
    total = 0
    for product in products:
        if total >= CALIBRATION_BYTES:
            break
        sample.append(product)
        total += product[0].numel() * product[0].element_size()
    return sample


def measured_rows(sample: list[Product], sample_bytes: int, most: int) -> RowsChoice:
    small_linear = torch.ops.llmos_cpu.small_linear
    onednn = torch.ops.mkldnn._linear_pointwise
    widths = sorted({plain.shape[1] for plain, _, _ in sample})
    rows = ALWAYS_ROWS
    timings: list[tuple[int, float, float]] = []
    with torch.inference_mode():
        for num_rows in range(ALWAYS_ROWS + 1, most + 1):
            inputs = {width: torch.randn(num_rows, width) for width in widths}

            def small_pass(inputs: dict[int, torch.Tensor] = inputs) -> None:
                for plain, _, bias in sample:
                    small_linear(inputs[plain.shape[1]], plain, bias)

            def onednn_pass(inputs: dict[int, torch.Tensor] = inputs) -> None:
                for plain, weight, bias in sample:
                    onednn(inputs[plain.shape[1]], weight, bias, "none", [], "")

            small_s = onednn_s = math.inf
            for _ in range(ROUNDS):  # alternating, so a change of pace meets both
                small_s = min(small_s, best_pass_s(small_pass))
                onednn_s = min(onednn_s, best_pass_s(onednn_pass))
            timings.append((num_rows, small_s * 1e3, onednn_s * 1e3))
            if small_s > onednn_s:
                break
            rows = num_rows
    return RowsChoice(rows, "measured", timings, sample_bytes)


def best_pass_s(run: Callable[[], None]) -> float:
    run()  # the first pass warms up (and pages in) what the others read
    best = math.inf
    for _ in range(PASSES):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best
