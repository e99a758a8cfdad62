"""On CPU, the engine's matrix products run on oneDNN rather than ATen's default GEMM.

Most of a decode step's time on CPU goes to matrix products with few rows (one
per running request). oneDNN's linear primitive (the one PyTorch's own compiler
calls for CPU linears) runs those, the output head's included, and prefill's
products of many rows faster than ATen's `linear` does (figures in
`docs/benchmarks.md`).

Each output is the same dot product; only the order of the additions, and so
the last bit of rounding, may differ, as it does between any two BLAS builds.

A bfloat16 weight is handed to oneDNN packed (`_reorder_linear_weight`, as
PyTorch's compiler packs it when it freezes a CPU model): in its plain layout,
oneDNN's bfloat16 product gains little over float32's at one row. The packed
copy is made once, when the engine is built, and doubles a bfloat16 model's
weight memory (back to float32's); the bytes a step reads are still half of
float32's. A float32 weight runs unpacked, as it is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


def onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


# the rows oneDNN is told to expect when it packs a weight; decode steps run 1 to max_num_seqs
PACKING_BATCH_SIZE = 8


class CpuLinears:
    """The model's float32 and bfloat16 CPU `nn.Linear` modules, switchable onto oneDNN
    for a forward. Other modules (the int8 linears of
    `workers.quantization` among them) keep their own forward."""

    def __init__(self, model: Any) -> None:
        self.linears: list[torch.nn.Linear] = []
        self.weights: list[torch.Tensor] = []  # what oneDNN multiplies by, per linear
        if model.device.type == "cpu" and onednn_linear_available():
            dtypes = {torch.float32}
            if torch.ops.mkldnn._is_mkldnn_bf16_supported():  # else oneDNN emulates bfloat16, slowly
                dtypes.add(torch.bfloat16)
            self.linears = [
                module
                for module in model.modules()
                if type(module) is torch.nn.Linear and module.weight.dtype in dtypes
            ]
            self.weights = [onednn_weight(linear.weight) for linear in self.linears]

    @contextlib.contextmanager
    def on_onednn(self) -> Iterator[None]:
        for linear, weight in zip(self.linears, self.weights, strict=True):
            # object.__setattr__: forward is a plain attribute, no nn.Module bookkeeping needed
            object.__setattr__(linear, "forward", onednn_forward(weight, linear.bias))
        try:
            yield
        finally:
            for linear in self.linears:
                object.__delattr__(linear, "forward")  # the class's forward again


def onednn_weight(weight: torch.Tensor) -> torch.Tensor:
    if weight.dtype == torch.bfloat16:
        with torch.no_grad():
            return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACKING_BATCH_SIZE)
    return weight


def onednn_forward(weight: torch.Tensor, bias: torch.Tensor | None) -> Any:
    def forward(hidden: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(hidden, weight, bias, "none", [], "")

    return forward
