"""`--quantization int8`: the model's linears keep int8 weights, on CPU.

A decode step on CPU is bound by the weight bytes it reads, one pass over every
linear per step; int8 weights are a quarter of float32's.

The linears are PyTorch's dynamic int8 linears (`torch.ao.quantization.
quantize_dynamic`, on the x86/fbgemm kernels): int8 weights with one scale per
output channel; each call rounds its input to 8 bits with one scale and zero
point for the whole input, multiplies in 8 bits with int32 sums, and returns
float32.
ATen's weight-only kernel (`_weight_int8pack_mm`, activations left in float)
reads the same bytes but runs many times slower on CPU, and oneDNN's int8
linear (`onednn.qlinear_pointwise`) fed by inputs quantized by hand is slower
than this one at 1, 8 and 32 rows (measured in the commit that added this
module). The kernels take float32 inputs only, so int8 runs with
`--dtype float32`: activations and the KV cache stay float32.

The output head stays float32, though an int8 head makes a step faster still:
its error reaches the logits unsmoothed, where near-tied candidates flip, and
with it more int8 greedy answers part from float32's (docs/benchmarks.md,
"Precision on CPU"; tests/test_cpu_precision.py states the tolerance kept). The embeddings stay
float32 too: a step looks up a few of their rows, so their size costs memory,
not time.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch

log = logging.getLogger(__name__)

QUANTIZATIONS = ("none", "int8")


def resolve_quantization(name: str, device: torch.device, dtype: torch.dtype) -> str:
    """`name`, checked against the device and dtype: a worker that cannot run it exits
    with one line."""
    if name not in QUANTIZATIONS:
        raise SystemExit(
            f"llmos worker: unknown quantization {name!r}; use one of {', '.join(QUANTIZATIONS)}"
        )
    if name == "int8" and device.type != "cpu":
        raise SystemExit(
            f"llmos worker: --quantization int8 runs on CPU only, not on {device}; "
            "use --device cpu or --quantization none"
        )
    if name == "int8" and dtype != torch.float32:
        raise SystemExit(
            f"llmos worker: --quantization int8 runs with float32 activations, not {dtype}; "
            "use --dtype float32 (auto on CPU) or --quantization none"
        )
    if name == "int8" and not {"x86", "fbgemm"} & set(torch.backends.quantized.supported_engines):
        raise SystemExit("llmos worker: --quantization int8 needs PyTorch's x86 int8 kernels (fbgemm)")
    return name


def quantize_int8(model: Any) -> int:
    """Every `nn.Linear` of the model but its output head becomes a dynamic int8
    linear, in place. Returns how many did."""
    head = model.get_output_embeddings()
    per_channel = torch.ao.quantization.per_channel_dynamic_qconfig
    qconfig_spec = {
        name: per_channel
        for name, module in model.named_modules()
        if type(module) is torch.nn.Linear and module is not head
    }
    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao (which llmos does not depend on)
        # and the deprecation of quantized tensor types; both still run in this torch
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        torch.ao.quantization.quantize_dynamic(model, qconfig_spec, dtype=torch.qint8, inplace=True)
    log.info("int8 weights for %d linears; the output head stays float32", len(qconfig_spec))
    return len(qconfig_spec)


def int8_weight_bytes(model: Any) -> int:
    """The bytes of the model's int8 weights, which `model.parameters()` does not list
    (a dynamic int8 linear keeps them packed, out of the module's tensors)."""
    return sum(
        module.weight().numel()  # one byte each
        for module in model.modules()
        if isinstance(module, torch.ao.nn.quantized.dynamic.Linear)
    )
