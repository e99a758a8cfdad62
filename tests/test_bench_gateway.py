"""`llmos bench gateway` at toy scale: both sides complete every request, and the JSON
line carries the figures docs/benchmarks.md quotes; never speed."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from llmos.cli import cli

pytest.importorskip("fastapi", reason="pip install 'llmos[gateway]'")
pytestmark = pytest.mark.e2e

NUM_REQUESTS = 40
TOY_ARGS = [
    "--workers", "2", "--slots", "8", "--latency-pairs", "4",
    "--scale-requests", str(NUM_REQUESTS), "--scale-in-flight", "8", "--json-only",
]  # fmt: skip


def test_toy_run_completes_every_request_on_both_sides(tmp_path) -> None:
    outcome = CliRunner().invoke(cli, ["bench", "gateway", *TOY_ARGS, "--log-dir", str(tmp_path)])
    assert outcome.exit_code == 0, outcome.output
    summary = json.loads(outcome.output.strip().splitlines()[-1])
    for side in ("zeromq", "http"):
        figures = summary["throughput"][side]
        assert figures["completed"] == NUM_REQUESTS, figures
        assert figures["errors"] == {}
    for side in ("sdk", "http"):
        assert 0 < summary["latency"][side]["ttft_p50_ms"] <= summary["latency"][side]["e2e_p99_ms"]
    for key in (
        "added_ttft_p50_ms",
        "added_ttft_p99_ms",
        "http_throughput_ratio",
        "gateway_cpu_us_per_request",
    ):
        assert summary[key] is not None, key
