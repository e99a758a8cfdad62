"""`llmos_cpu::small_linear`: float32 products of one to three rows, as `F.linear` makes them;
`small_linear_int8`: the same with int8 weights and a scale per output (`--quantization int8`).

The engine runs them for decode steps of a few requests (`workers.cpu_linears`); their
dot products add in another order than oneDNN's or ATen's, so they agree within
float32 rounding.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from int8_rounding import rounded_per_block

from workers import cpu_kernels
from workers.cpu_linears import PACKED_MIN_ROWS, CpuLinears, small_linear_max_rows
from workers.dummy import build_dummy_model
from workers.quantization import quantize_int8

pytestmark = pytest.mark.skipif(not cpu_kernels.has_kernels(), reason="no C++ compiler for the kernels")


def small_linear(hidden, weight, bias=None):
    return torch.ops.llmos_cpu.small_linear(hidden, weight, bias)


@pytest.mark.parametrize("num_rows", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("in_features", [1, 31, 64, 768, 1000])
def test_products_equal_f_linear_within_rounding(num_rows, in_features):
    if num_rows > small_linear_max_rows():
        pytest.skip(f"the kernels take {small_linear_max_rows()} rows here (no AVX2)")
    generator = torch.Generator().manual_seed(in_features * 10 + num_rows)
    weight = torch.randn(97, in_features, generator=generator)
    bias = torch.randn(97, generator=generator)
    hidden = torch.randn(num_rows, 1, in_features, generator=generator)  # [rows, tokens, features]

    out = small_linear(hidden, weight, bias)

    assert out.shape == (num_rows, 1, 97)
    torch.testing.assert_close(out, torch.nn.functional.linear(hidden, weight, bias), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(small_linear(hidden, weight), hidden @ weight.T, rtol=1e-5, atol=1e-4)


def test_a_strided_input_is_read_as_its_values():
    weight = torch.randn(16, 40)
    hidden = torch.randn(40, 2).T  # not contiguous

    torch.testing.assert_close(small_linear(hidden, weight), hidden @ weight.T, rtol=1e-5, atol=1e-4)


def test_what_it_does_not_take_is_refused_in_one_line():
    weight = torch.randn(8, 4)
    too_many = small_linear_max_rows() + 1
    with pytest.raises(RuntimeError, match=f"1 to {too_many - 1} rows"):
        small_linear(torch.randn(too_many, 4), weight)
    with pytest.raises(RuntimeError, match="float32"):
        small_linear(torch.randn(1, 4, dtype=torch.float64), weight.double())
    with pytest.raises(RuntimeError, match="in features"):
        small_linear(torch.randn(1, 5), weight)
    with pytest.raises(RuntimeError, match="contiguous"):
        small_linear(torch.randn(1, 8), weight.T)


@pytest.mark.parametrize("cpu_weights", ["fast", "compact"])
def test_the_engines_few_row_products_are_its_own(cpu_weights):
    model = build_dummy_model("llama-tiny")
    cpu_linears = CpuLinears(model, cpu_weights)

    with cpu_linears.on_onednn():
        for linear in cpu_linears.linears:
            for num_rows in (1, PACKED_MIN_ROWS - 1, PACKED_MIN_ROWS, small_linear_max_rows(), 16):
                hidden = torch.randn(num_rows, linear.in_features)
                out = linear(hidden)
                expected = torch.nn.functional.linear(hidden, linear.weight, linear.bias)
                torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-4)
                if num_rows <= cpu_linears.small_linear_rows.rows:  # bit for bit the kernel's: it made them
                    assert torch.equal(out, small_linear(hidden, linear.weight, linear.bias))


@pytest.mark.parametrize(
    ("flags", "weights", "kernel"),
    [([], "float32", "small_linear"), (["--int8"], "int8", "small_linear_int8")],
)
def test_the_few_row_products_script_prints_both_sides_and_a_json_line(flags, weights, kernel):
    script = Path(__file__).parent.parent / "scripts" / "few_row_products.py"
    result = subprocess.run(
        [sys.executable, str(script), "llama-tiny", "--repeats", "1", "--threads", "1", *flags],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["weights"] == weights
    assert [run["rows"] for run in summary["runs"]] == [1, 2, 3, 4, 8, 16]
    # the kernel's side where it takes the row count; above, the library's product alone
    max_rows = 3 if kernel == "small_linear_int8" else small_linear_max_rows()
    for run in summary["runs"]:
        if run["rows"] <= max_rows:
            assert run["ratio"] > 0 and run[f"{kernel}_ms"] > 0
        else:
            assert "ratio" not in run


def int8_weights(out_features: int, in_features: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    int8 = torch.randint(-127, 128, (out_features, in_features), dtype=torch.int8, generator=generator)
    return int8, torch.rand(out_features, generator=generator) / 100


@pytest.mark.parametrize("num_rows", [1, 2, 3])
@pytest.mark.parametrize("in_features", [1, 31, 64, 768, 801])
def test_int8_products_equal_the_rounded_input_times_the_dequantized_weights(num_rows, in_features):
    int8, scales = int8_weights(53, in_features, seed=in_features + num_rows)
    int8[0, : min(in_features, 5)] = -128  # the int8 minimum, whose magnitude is 128
    generator = torch.Generator().manual_seed(10 * in_features + num_rows)  # not the global RNG: no flakes
    bias = torch.randn(53, generator=generator)
    hidden = torch.randn(num_rows, in_features, generator=generator)
    hidden[0, : min(in_features, 40)] = 0.0  # an all-zero block: scale 0

    out = torch.ops.llmos_cpu.small_linear_int8(hidden, int8, scales, bias)

    expected = torch.nn.functional.linear(rounded_per_block(hidden), int8.float() * scales[:, None], bias)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-4)
    # the rounding's error, against the float input: at most half a step a value
    unrounded = torch.nn.functional.linear(hidden, int8.float() * scales[:, None], bias)
    assert (out - unrounded).abs().max() < 0.01 * unrounded.abs().max() + 1e-4


def test_int8_products_refuse_what_they_do_not_take():
    int8, scales = int8_weights(8, 4, seed=0)
    with pytest.raises(RuntimeError, match="int8"):
        torch.ops.llmos_cpu.small_linear_int8(torch.randn(1, 4), int8.float(), scales, None)
    with pytest.raises(RuntimeError, match="scales"):
        torch.ops.llmos_cpu.small_linear_int8(torch.randn(1, 4), int8, scales[:4], None)
    with pytest.raises(RuntimeError, match="1 to 3 rows"):
        torch.ops.llmos_cpu.small_linear_int8(torch.randn(4, 4), int8, scales, None)


def test_an_int8_models_few_row_products_are_the_kernels_and_the_others_its_own():
    model = build_dummy_model("llama-tiny")
    quantize_int8(model)
    cpu_linears = CpuLinears(model)
    dynamic = [m for m in model.modules() if type(m) is torch.ao.nn.quantized.dynamic.Linear]
    assert cpu_linears.int8_linears == dynamic and dynamic
    module = dynamic[0]
    weight, bias = module._packed_params._weight_bias()
    int8, scales = weight.int_repr(), weight.q_per_channel_scales().float()
    with torch.inference_mode(), cpu_linears.on_onednn():
        for num_rows in (1, 3, PACKED_MIN_ROWS):
            hidden = torch.randn(num_rows, int8.shape[1])
            out = module(hidden)
            if num_rows < PACKED_MIN_ROWS:  # bit for bit the kernel's
                assert torch.equal(out, torch.ops.llmos_cpu.small_linear_int8(hidden, int8, scales, bias))
            else:  # fbgemm's, which rounds the input to int8 too
                assert torch.equal(out, type(module).forward(module, hidden))
    assert "forward" not in vars(module)  # the module's own forward again
