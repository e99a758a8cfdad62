"""`--quantization int8`: the model's linears keep int8 weights, on CPU.

A decode step on CPU is bound by the weight bytes it reads, one pass over every
linear per step; int8 weights are a quarter of float32's.

The linears are PyTorch's dynamic int8 linears (`torch.ao.nn.quantized.dynamic.
Linear`, as `quantize_dynamic` makes them, on the x86/fbgemm kernels): int8
weights with one scale per output channel, rounded one linear at a time from the
checkpoint's own dtype (`quantize_int8`), so loading takes little more memory
than the checkpoint and the rounded model. Each call rounds its input to 8 bits
with one scale and zero point for the whole input, multiplies in 8 bits with
int32 sums, and returns float32.
ATen's weight-only kernel (`_weight_int8pack_mm`, activations left in float)
reads the same bytes but runs many times slower on CPU, and oneDNN's int8
linear (`onednn.qlinear_pointwise`) fed by inputs quantized by hand is slower
than this one at 1, 8 and 32 rows (measured in the commit that added this
module). The kernels take float32 inputs only, so int8 runs with
`--dtype float32`: activations and the KV cache stay float32.

The output head is not a dynamic int8 linear: rounding its input to int8 too
moved the logits enough that near-tied candidates flipped, and a third fewer
greedy answers stayed float32's. Its weights alone are rounded to int8, one
scale per output (`round_head_to_int8`): products of a few rows read that int8
copy (`small_linear_int8`, where the CPU kernels build, which rounds its input
rows to int8 per block of 32 values, each block with its own scale: much finer
than one scale for the whole input), the others a float32 copy of the same
rounded values, so every path computes with one set of weights. That keeps the
answers within the tolerance (docs/benchmarks.md, "Precision on CPU";
tests/test_cpu_precision.py) and makes the head, the largest single read of a
one-request step, a quarter of its bytes there. The embeddings stay float32: a
step looks up a few of their rows, so their size costs memory, not time.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
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


# the attribute of the output head's linear holding its int8 weights and their scales
HEAD_INT8 = "llmos_int8_weight"
# rows of the head rounded at once: its temporaries stay a few MB, not copies of the whole head
HEAD_ROWS_PER_CHUNK = 4096


@contextlib.contextmanager
def torch_ao_warnings_off() -> Iterator[None]:
    """torch.ao.quantization announces its move to torchao (which llmos does not depend
    on) and the deprecation of quantized tensor types; both still run in this torch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


def quantize_int8(model: Any) -> int:
    """Every `nn.Linear` of the model but its output head becomes a dynamic int8
    linear, in place; the head's weights are rounded to int8 (`round_head_to_int8`);
    every other parameter and buffer becomes float32. Returns how many linears
    became dynamic int8 ones.

    The model may come in its checkpoint's own dtype: each linear is widened to
    float32 alone, just before it is rounded, and its float weights are freed as it
    is swapped, so a bfloat16 checkpoint never stands in memory at float32's size (and,
    every tensor of it converted, no mapping of its file outlives the load). A 16-bit
    weight widens exactly, so the rounded weights are those of the checkpoint loaded
    in float32. A float32 checkpoint's embeddings and norms stay views of its file's
    mapping, as they do without int8: its pages are the kernel's to reclaim, where
    copies would be the worker's own."""
    head = model.get_output_embeddings()
    names = body_linear_names(model)
    with torch_ao_warnings_off():
        for name in names:
            swap_for_dynamic_int8(model, name)
    if isinstance(head, torch.nn.Linear):
        round_head_to_int8(model, head)
    model.float()  # the embeddings and norms, where the checkpoint keeps them in 16 bits
    model.config.dtype = torch.float32  # as if loaded in float32, whatever the checkpoint's dtype
    log.info("int8 weights for %d linears and the output head (weights only)", len(names))
    return len(names)


def body_linear_names(model: Any) -> list[str]:
    """The names of the model's `nn.Linear` modules but its output head: those int8 rounds
    into dynamic int8 linears."""
    head = model.get_output_embeddings()
    return [
        name
        for name, module in model.named_modules()
        if type(module) is torch.nn.Linear and module is not head
    ]


def swap_for_dynamic_int8(model: Any, name: str) -> None:
    """Replace the linear `name` with a dynamic int8 one: int8 weights, symmetric, one
    scale per output channel, what `torch.ao.quantization.quantize_dynamic` makes with
    `per_channel_dynamic_qconfig`. The linear gets the shared qconfig itself, so
    refcounting frees it once swapped: `quantize_dynamic` gives each linear a copy
    whose observer factory holds that linear, a reference cycle that keeps every float
    weight alive until the next garbage collection."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    linear = getattr(parent, child).float()
    linear.qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
    setattr(parent, child, torch.ao.nn.quantized.dynamic.Linear.from_float(linear))


def quantize_dynamic_int8(model: Any) -> None:
    """What `quantize_int8` makes of the body's linears, by torch's own `quantize_dynamic`
    over the whole model at once (the reference its tests and scripts/int8_load_memory.py
    compare with); the head is left as it is."""
    spec = dict.fromkeys(body_linear_names(model), torch.ao.quantization.per_channel_dynamic_qconfig)
    with torch_ao_warnings_off():
        torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)


def round_head_to_int8(model: Any, head: torch.nn.Linear) -> None:
    """Round the head's weights to int8, symmetric, one scale per output: keep the int8
    values and scales on the module (`HEAD_INT8`), and as its float32 weight the same
    values times their scales. A head tied to the input embeddings gets its own weight
    (the embeddings keep theirs)."""
    with torch.no_grad():
        weight = head.weight.detach()
        num_rows = weight.shape[0]
        int8 = torch.empty(weight.shape, dtype=torch.int8)
        rounded = torch.empty(weight.shape, dtype=torch.float32)
        scales = torch.empty(num_rows, dtype=torch.float32)
        for start in range(0, num_rows, HEAD_ROWS_PER_CHUNK):
            rows = slice(start, start + HEAD_ROWS_PER_CHUNK)
            chunk = weight[rows].float()
            chunk_scales = (chunk.abs().amax(dim=1) / 127).clamp_min(torch.finfo(torch.float32).tiny)
            values = (chunk / chunk_scales[:, None]).round_().clamp_(-127, 127)
            int8[rows] = values.to(torch.int8)
            rounded[rows] = values.mul_(chunk_scales[:, None])
            scales[rows] = chunk_scales
        head.weight = torch.nn.Parameter(rounded, requires_grad=False)
    setattr(head, HEAD_INT8, (int8, scales))
    if getattr(model.config, "tie_word_embeddings", False):
        model.config.tie_word_embeddings = False  # they are two tensors now


def int8_weight_bytes(model: Any) -> int:
    """The bytes of the model's int8 weights, which `model.parameters()` does not list
    (a dynamic int8 linear keeps them packed, out of the module's tensors)."""
    dynamic = sum(
        module.weight().numel()  # one byte each
        for module in model.modules()
        if isinstance(module, torch.ao.nn.quantized.dynamic.Linear)
    )
    head = getattr(model.get_output_embeddings(), HEAD_INT8, None)
    return dynamic + (head[0].numel() if head is not None else 0)
