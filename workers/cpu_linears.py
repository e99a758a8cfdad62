"""On CPU, the engine's matrix products run on oneDNN rather than ATen's default GEMM.

Most of a decode step's time on CPU goes to matrix products with few rows (one
per running request). oneDNN's linear primitive (the one PyTorch's own compiler
calls for CPU linears) runs those, the output head's included, and prefill's
products of many rows faster than ATen's `linear` does (figures in
`docs/benchmarks.md`).

Each output is the same dot product; only the order of the additions, and so
the last bit of rounding, may differ, as it does between any two BLAS builds.

Weights are handed to oneDNN packed (`_reorder_linear_weight`, as PyTorch's
compiler packs them when it freezes a CPU model), in a layout blocked for
products of several rows. A bfloat16 weight runs packed at every row count: in
its plain layout oneDNN's bfloat16 product gains little over float32's at one
row. A float32 weight keeps both layouts: packed from PACKED_MIN_ROWS rows on,
plain below, where a product streams the weight once and the plain layout is
the faster; there, where the project's CPU kernels build (`workers.cpu_kernels`),
their `small_linear` runs it instead of oneDNN (with `compact` weights too): it
streams each weight once for all the rows, at more of the memory bandwidth
(figures in docs/benchmarks.md). Where the kernels have AVX2, `small_linear`
can run products of 4 to 8 rows on the plain weight too: whether it does, up to how
many, is measured when the engine is built (`workers.small_linear_rows`: at 8 rows it
ran 1.3-1.6x oneDNN's packed product in some spells of the development VM, 0.75x in
others), and the packed copy serves the rest. The packed copies are
made once, when the engine is built; each doubles the memory of the weights it
copies.
`--cpu-weights compact` makes no copy: every weight runs as the model holds it.

`--quantization int8`'s dynamic linears (`workers.quantization`) run fbgemm's
product, which rounds each input row to int8 too, from PACKED_MIN_ROWS rows on;
below, where the kernels build, `small_linear_int8` streams their int8 weights once
for all the rows, with the input rows rounded to int8 per block of 32 values (as
llama.cpp's q8_0 rounds activations) and integer dot products (about twice
fbgemm's speed at one row), from an unpacked int8 copy of the weights made once
(one byte a weight).

The swap is scoped: while the engine's forward runs, every such `nn.Linear`
has an instance `forward` that calls oneDNN; afterwards the model is as it was
for anyone else (the benchmark's transformers baselines run on the same model
object). A worker's model serves its engine alone, so there a weight the engine
never reads (a bfloat16 linear's plain one, once packed) is freed as soon as its
copy exists (`release_unused`): a bfloat16 worker holds its weights once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from workers import cpu_kernels
from workers.quantization import HEAD_INT8
from workers.small_linear_rows import RowsChoice, choose_rows


def onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


# the rows oneDNN is told to expect when it packs a weight; decode steps run 1 to max_num_seqs
PACKING_BATCH_SIZE = 8
PACKED_MIN_ROWS = 4  # a float32 product of fewer rows runs on the plain layout
CPU_WEIGHTS = ("fast", "compact")  # packed copies where they are faster; no copy


def check_cpu_weights(name: str) -> str:
    if name not in CPU_WEIGHTS:
        raise ValueError(f"unknown --cpu-weights {name!r}; use one of {', '.join(CPU_WEIGHTS)}")
    return name


class CpuLinears:
    """The model's float32 and bfloat16 CPU `nn.Linear` modules, switchable onto oneDNN
    for a forward. Other modules (the int8 linears of
    `workers.quantization` among them) keep their own forward."""

    def __init__(self, model: Any, cpu_weights: str = "fast", release_unused: bool = False) -> None:
        self.linears: list[torch.nn.Linear] = []
        # per linear: (the weight of products under PACKED_MIN_ROWS rows, or None where
        # one weight serves all; the weight of the others)
        self.weights: list[tuple[torch.Tensor | None, torch.Tensor]] = []
        if model.device.type == "cpu" and onednn_linear_available():
            dtypes = {torch.float32}
            if torch.ops.mkldnn._is_mkldnn_bf16_supported():  # else oneDNN emulates bfloat16, slowly
                dtypes.add(torch.bfloat16)
            self.linears = [
                module
                for module in model.modules()
                if type(module) is torch.nn.Linear and module.weight.dtype in dtypes
            ]
            is_compact = check_cpu_weights(cpu_weights) == "compact"
            shared = {id(parameter) for parameter in model.get_input_embeddings().parameters()}
            for linear in self.linears:
                few_rows, weight = onednn_weights(linear.weight, is_compact)
                self.weights.append((few_rows, weight))
                is_unused = few_rows is not linear.weight and weight is not linear.weight
                if release_unused and is_unused and id(linear.weight) not in shared:
                    release_weight(linear)  # (a head tied to the embeddings stays: they read it)
        # how many rows `small_linear` takes (measured here: workers.small_linear_rows)
        self.small_linear_rows = self.choose_small_linear_rows()
        rows = self.small_linear_rows.rows if self.small_linear_rows is not None else None
        # made once, not per forward: each picks its products' path (and builds the CPU kernels)
        self.forwards = [
            onednn_forward(few_rows, weight, linear.bias, getattr(linear, HEAD_INT8, None), rows)
            for linear, (few_rows, weight) in zip(self.linears, self.weights, strict=True)
        ]
        # `--quantization int8`'s dynamic linears: products of few rows in `small_linear_int8`
        self.int8_linears: list[torch.nn.Module] = []
        self.int8_forwards: list[Any] = []
        if model.device.type == "cpu" and cpu_kernels.has_kernels():
            for module in model.modules():
                forward = int8_few_rows_forward(module)
                if forward is not None:
                    self.int8_linears.append(module)
                    self.int8_forwards.append(forward)

    def choose_small_linear_rows(self) -> RowsChoice | None:
        """How many rows the float32 products `small_linear` runs take; None where it runs
        none (no CPU kernels, no plain float32 weight)."""
        products = []
        for linear, (few_rows, weight) in zip(self.linears, self.weights, strict=True):
            plain = few_rows if few_rows is not None else weight
            if getattr(linear, HEAD_INT8, None) is None and is_plain_float32(plain):
                products.append((plain, weight, linear.bias))
        if not products or not cpu_kernels.has_kernels():  # (products first: no build for CUDA)
            return None
        return choose_rows(products, small_linear_max_rows())

    def switched(self) -> list[tuple[torch.nn.Module, Any]]:
        """(module, its forward while the engine runs), for every module switched."""
        return [
            *zip(self.linears, self.forwards, strict=True),
            *zip(self.int8_linears, self.int8_forwards, strict=True),
        ]

    def forward_by_module(self) -> dict[int, Any]:
        """Each switched linear's forward while the engine runs, by `id` of its module."""
        return {id(linear): forward for linear, forward in self.switched()}

    @contextlib.contextmanager
    def on_onednn(self) -> Iterator[None]:
        switched = self.switched()
        for linear, forward in switched:
            # object.__setattr__: forward is a plain attribute, no nn.Module bookkeeping needed
            object.__setattr__(linear, "forward", forward)
        try:
            yield
        finally:
            for linear, _ in switched:
                object.__delattr__(linear, "forward")  # the class's forward again


def onednn_weights(weight: torch.Tensor, is_compact: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(the weight of products under PACKED_MIN_ROWS rows: a float32 linear's plain one,
    else None; the weight of the others: packed, or with `is_compact` the plain one)."""
    if is_compact:
        return None, weight
    with torch.no_grad():
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACKING_BATCH_SIZE)
    return (weight if weight.dtype == torch.float32 else None), packed


def unpacked_int8(module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
    """A dynamic int8 linear's (`workers.quantization`) weights as `small_linear_int8`
    reads them: (int8 `[out, in]`, float32 scale per output, bias), copied out of its
    packed parameters; None for any other module, or weights not symmetric per output."""
    if type(module) is not torch.ao.nn.quantized.dynamic.Linear:
        return None
    weight, bias = module._packed_params._weight_bias()
    is_symmetric_per_row = (
        weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
        and weight.q_per_channel_axis() == 0
        and not weight.q_per_channel_zero_points().any()
    )
    if not is_symmetric_per_row:
        return None
    return weight.int_repr().contiguous(), weight.q_per_channel_scales().float().contiguous(), bias


def int8_few_rows_forward(module: torch.nn.Module) -> Any:
    """For a dynamic int8 linear with symmetric per-channel weights, its forward while
    the engine runs: products of fewer than PACKED_MIN_ROWS rows in `small_linear_int8`
    (the int8 weights streamed once, the inputs rounded to int8 per 32 values), the
    others in the module's own forward (fbgemm, which rounds each input row to int8
    with one scale). Keeps an unpacked int8 copy of the weights (one byte a weight).
    None for any other module."""
    unpacked = unpacked_int8(module)
    if unpacked is None:
        return None
    int8, scales, bias = unpacked
    own_forward = type(module).forward
    return int8_forward(int8, scales, bias, lambda hidden: own_forward(module, hidden))


def int8_forward(int8: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None, many_rows: Any) -> Any:
    """A forward that runs products of fewer than PACKED_MIN_ROWS rows in
    `small_linear_int8` on `int8` and `scales`, and the others in `many_rows`."""
    small_linear_int8 = torch.ops.llmos_cpu.small_linear_int8

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        if hidden.numel() < PACKED_MIN_ROWS * hidden.shape[-1]:
            return small_linear_int8(hidden, int8, scales, bias)
        return many_rows(hidden)

    return forward


def small_linear_max_rows() -> int:
    """The most rows of a float32 product `small_linear` runs: 8 where the kernels have
    AVX2 (at 16, oneDNN's packed product was the faster), else 3."""
    return int(torch.ops.llmos_cpu.small_linear_max_rows())


def release_weight(linear: torch.nn.Linear) -> None:
    """Free a weight only its packed copy is used for: an empty one takes its place (the
    module's own forward, which would need it, never runs in the engine)."""
    linear.weight = torch.nn.Parameter(linear.weight.new_empty(0), requires_grad=False)


def is_plain_float32(weight: torch.Tensor) -> bool:
    return weight.dtype == torch.float32 and not weight.is_mkldnn and weight.is_contiguous()


def onednn_forward(
    few_rows: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    int8: tuple[torch.Tensor, torch.Tensor] | None = None,
    small_linear_rows: int | None = None,
) -> Any:
    """The forward of one linear while the engine runs: `few_rows` (or, where that is None,
    the one weight) for products under PACKED_MIN_ROWS rows; where that weight is a plain
    float32 one and the CPU kernels are built, in `small_linear`, up to
    `small_linear_rows` rows (None: its `small_linear_max_rows()`); `weight` for the others.
    An int8-rounded head (`int8`: its int8 weights and scales, `workers.quantization`)
    runs its few-row products in `small_linear_int8` instead."""
    linear = torch.ops.mkldnn._linear_pointwise
    plain = few_rows if few_rows is not None else weight
    if int8 is not None and cpu_kernels.has_kernels():
        int8_weight, scales = int8
        return int8_forward(
            int8_weight, scales, bias, lambda hidden: linear(hidden, weight, bias, "none", [], "")
        )
    if is_plain_float32(plain) and cpu_kernels.has_kernels():
        small_linear = torch.ops.llmos_cpu.small_linear
        max_rows = small_linear_rows or small_linear_max_rows()

        def forward(hidden: torch.Tensor) -> torch.Tensor:
            if hidden.numel() <= max_rows * hidden.shape[-1]:
                return small_linear(hidden, plain, bias)
            return linear(hidden, weight, bias, "none", [], "")

        return forward
    if few_rows is None:
        return lambda hidden: linear(hidden, weight, bias, "none", [], "")

    def onednn_only(hidden: torch.Tensor) -> torch.Tensor:
        is_small = hidden.numel() < PACKED_MIN_ROWS * hidden.shape[-1]
        return linear(hidden, few_rows if is_small else weight, bias, "none", [], "")

    return onednn_only
