"""How many rows `small_linear` takes (`workers.small_linear_rows`): measured where the
weights exceed the caches, pinned by LLMOS_SMALL_LINEAR_ROWS, the kernel's most for a
model that fits in cache; and the engine's products follow the choice. Never which
product is the faster: that is the machine's."""

from __future__ import annotations

import pytest
import torch

from workers import cpu_kernels
from workers.cpu_linears import CpuLinears, small_linear_max_rows
from workers.dummy import build_dummy_model
from workers.small_linear_rows import ALWAYS_ROWS, CALIBRATION_BYTES, ROWS_ENV, choose_rows, sample_of

pytestmark = pytest.mark.skipif(not cpu_kernels.has_kernels(), reason="no C++ compiler for the kernels")


def products(num: int, out_features: int = 1024, in_features: int = 1024) -> list:
    """`num` float32 products as a `fast` engine keeps them: plain and packed weights."""
    made = []
    for _ in range(num):
        plain = torch.randn(out_features, in_features)
        made.append((plain, torch.ops.mkldnn._reorder_linear_weight(plain, 8), None))
    return made


def test_a_model_that_fits_in_cache_keeps_the_kernels_most(monkeypatch):
    monkeypatch.delenv(ROWS_ENV, raising=False)
    choice = CpuLinears(build_dummy_model("llama-tiny")).small_linear_rows

    assert (choice.rows, choice.how, choice.timings) == (small_linear_max_rows(), "default", [])


def test_weights_beyond_the_caches_are_measured_once_a_process(monkeypatch):
    monkeypatch.delenv(ROWS_ENV, raising=False)
    most = small_linear_max_rows()
    if most <= ALWAYS_ROWS:
        pytest.skip("the kernels take no more rows than they always do here (no AVX2)")
    made = products(CALIBRATION_BYTES // (1024 * 1024 * 4) + 4)  # the sample stops at the bytes

    choice = choose_rows(made, most)

    assert choice.how == "measured" and ALWAYS_ROWS <= choice.rows <= most
    assert CALIBRATION_BYTES <= choice.sample_bytes < CALIBRATION_BYTES + 1024 * 1024 * 4
    measured = [rows for rows, _, _ in choice.timings]
    assert measured[0] == ALWAYS_ROWS + 1 and measured == list(range(ALWAYS_ROWS + 1, measured[-1] + 1))
    # it stops at the first count oneDNN ran faster, or measures them all
    assert measured[-1] == (choice.rows + 1 if choice.rows < most else most)
    for rows, small_ms, onednn_ms in choice.timings:
        assert small_ms > 0 and onednn_ms > 0
        assert (small_ms <= onednn_ms) == (rows <= choice.rows)
    assert choose_rows(made, most) is choice  # the same weights again: not measured again
    assert len(sample_of(made)) == len(made) - 4


@pytest.mark.parametrize("pinned", ["3", "5", "99"])
def test_the_environment_pins_the_rows_and_the_engines_products_follow(monkeypatch, pinned):
    monkeypatch.setenv(ROWS_ENV, pinned)
    rows = min(int(pinned), small_linear_max_rows())
    cpu_linears = CpuLinears(build_dummy_model("llama-tiny"))
    assert (cpu_linears.small_linear_rows.rows, cpu_linears.small_linear_rows.how) == (rows, "pinned")

    linear = cpu_linears.linears[0]
    with torch.inference_mode(), cpu_linears.on_onednn():
        for num_rows in (rows, rows + 1):
            hidden = torch.randn(num_rows, linear.in_features)
            out = linear(hidden)
            if num_rows <= rows:  # bit for bit the kernel's: it made them
                assert torch.equal(out, torch.ops.llmos_cpu.small_linear(hidden, linear.weight, linear.bias))
            expected = torch.nn.functional.linear(hidden, linear.weight, linear.bias)
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(("value", "message"), [("2", "at least 3"), ("many", "an integer or auto")])
def test_a_bad_pin_is_a_clear_error(monkeypatch, value, message):
    monkeypatch.setenv(ROWS_ENV, value)

    with pytest.raises(ValueError, match=message):
        CpuLinears(build_dummy_model("llama-tiny"))
