"""`llmos_cpu::small_linear`: float32 products of one to three rows, as `F.linear` makes them.

The engine runs it for decode steps of a few requests (`workers.cpu_linears`); its
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

from workers import cpu_kernels
from workers.cpu_linears import PACKED_MIN_ROWS, CpuLinears
from workers.dummy import build_dummy_model

pytestmark = pytest.mark.skipif(not cpu_kernels.has_kernels(), reason="no C++ compiler for the kernels")


def small_linear(hidden, weight, bias=None):
    return torch.ops.llmos_cpu.small_linear(hidden, weight, bias)


@pytest.mark.parametrize("num_rows", [1, 2, 3])
@pytest.mark.parametrize("in_features", [1, 31, 64, 768, 1000])
def test_products_equal_f_linear_within_rounding(num_rows, in_features):
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
    with pytest.raises(RuntimeError, match="1 to 3 rows"):
        small_linear(torch.randn(4, 4), weight)
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
            for num_rows in (1, PACKED_MIN_ROWS - 1, PACKED_MIN_ROWS, 16):
                hidden = torch.randn(num_rows, linear.in_features)
                out = linear(hidden)
                expected = torch.nn.functional.linear(hidden, linear.weight, linear.bias)
                torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-4)
                if num_rows < PACKED_MIN_ROWS:  # bit for bit the kernel's: it made them
                    assert torch.equal(out, small_linear(hidden, linear.weight, linear.bias))


def test_the_few_row_products_script_prints_both_sides_and_a_json_line():
    script = Path(__file__).parent.parent / "scripts" / "few_row_products.py"
    result = subprocess.run(
        [sys.executable, str(script), "llama-tiny", "--repeats", "1", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert [run["rows"] for run in summary["runs"]] == [1, 2, 3, 4, 8]
    assert all(run["ratio"] > 0 for run in summary["runs"][:3])
    assert "ratio" not in summary["runs"][3]  # 4 rows and more stay on oneDNN
