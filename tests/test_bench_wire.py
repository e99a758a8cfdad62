"""`llmos bench wire` at toy scale: every side answers every request, and the JSON line
carries the figures docs/benchmarks.md names; never speed."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from llmos.cli import cli

pytestmark = pytest.mark.e2e

NUM_REQUESTS = 50
# tests run with LLMOS_INSECURE=1 (conftest), which is also this option's variable
TOY_ARGS = ["--requests", str(NUM_REQUESTS), "--warmup", "5", "--rounds", "2", "--no-insecure", "--json-only"]
SIDES = ("stack", "echo", "echo_plain", "relay")
RATIOS = (
    "stack_vs_echo_p50",
    "stack_vs_echo_p99",
    "stack_vs_relay_p50",
    "stack_vs_relay_p99",
    "curve_vs_plain_echo_p50",
)


def run_bench(*args: str) -> dict:
    outcome = CliRunner().invoke(cli, ["bench", "wire", *args])
    assert outcome.exit_code == 0, outcome.output
    lines = outcome.stdout.strip().splitlines()
    assert len(lines) == 1, lines  # --json-only: the JSON line and nothing else
    return json.loads(lines[0])


def test_toy_run_answers_every_request_on_every_side(tmp_path) -> None:
    summary = run_bench(*TOY_ARGS, "--log-dir", str(tmp_path))
    assert summary["benchmark"] == "wire"
    assert summary["settings"]["is_secure"] is True
    assert summary["settings"]["message_bytes"] == summary["settings"]["envelope_bytes"] > 0
    assert summary["requested"] == summary["completed"] == NUM_REQUESTS
    for side in SIDES:
        figures = summary["sides"][side]
        assert figures["requests"] == figures["finished"] == NUM_REQUESTS, (side, figures)
        assert figures["errors"] == {}
        assert len(figures["round_p50_ms"]) == 2
        assert 0 < figures["p50_ms"] <= figures["p99_ms"]
    for key in RATIOS:
        assert isinstance(summary[key], float) and summary[key] > 0, key
    for key in ("broker_added_p50_ms", "broker_added_vs_relay_p50_ms"):
        assert isinstance(summary[key], float), key
    assert set(summary["sides"]["stack"]["cpu_us_per_request"]) == {"kernel", "scheduler", "broker", "sim-0"}
    assert set(summary["sides"]["relay"]["cpu_us_per_request"]) == {"relay", "relay-worker"}
    assert summary["broker_cpu_us_per_request"] >= 0
    assert set(summary["targets"]) == {"stack_p50_at_most_2x_echo", "stack_p99_at_most_2x_echo"}
    assert {"cpu", "cpu_count", "date", "commit"} <= set(summary["machine"])


def test_insecure_run_answers_every_request_and_says_so(tmp_path) -> None:
    summary = run_bench(
        "--requests", "10", "--warmup", "2", "--rounds", "1", "--insecure", "--message-bytes", "64",
        "--json-only", "--log-dir", str(tmp_path),
    )  # fmt: skip
    assert summary["settings"]["is_secure"] is False
    assert summary["settings"]["message_bytes"] == 64
    assert all(summary["sides"][side]["finished"] == 10 for side in SIDES)
    assert not (tmp_path / "wire-keys.json").exists()
