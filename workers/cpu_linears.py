"""On CPU, the engine's matrix products run on oneDNN rather than ATen's default GEMM.

Most of a decode step's time on CPU goes to matrix products with few rows (one
per running request). oneDNN's linear primitive (the one PyTorch's own compiler
calls for CPU linears) runs those, the output head's included, and prefill's
products of many rows faster than ATen's `linear` does (figures in
`docs/benchmarks.md`).

Each output is the same dot product; only the order of the additions, and so
the last bit of rounding, may differ, as it does between any two BLAS builds.

The swap is scoped: while the engine's forward runs, every `nn.Linear` of the
model has an instance `forward` that calls oneDNN; afterwards the model is as it
was for anyone else (the benchmark's transformers baselines run on the same
model object). The swap sets and deletes one attribute per linear, little next to
the forward itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


def onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class CpuLinears:
    """The model's float32 CPU `nn.Linear` modules, switchable onto oneDNN for a forward."""

    def __init__(self, model: Any) -> None:
        self.linears: list[torch.nn.Linear] = []
        if model.device.type == "cpu" and onednn_linear_available():
            self.linears = [
                module
                for module in model.modules()
                if type(module) is torch.nn.Linear and module.weight.dtype == torch.float32
            ]

    @contextlib.contextmanager
    def on_onednn(self) -> Iterator[None]:
        for linear in self.linears:
            # object.__setattr__: forward is a plain attribute, no nn.Module bookkeeping needed
            object.__setattr__(linear, "forward", onednn_forward(linear))
        try:
            yield
        finally:
            for linear in self.linears:
                object.__delattr__(linear, "forward")  # the class's forward again


def onednn_forward(linear: torch.nn.Linear) -> Any:
    weight, bias = linear.weight, linear.bias

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(hidden, weight, bias, "none", [], "")

    return forward
