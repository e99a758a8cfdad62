"""`llmos bench engine` on the smallest settings: the JSON line's shape, never its speed."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from click.testing import CliRunner

from llmos.cli import cli
from llmos_bench.engine import EngineBenchConfig, engine_class
from llmos_bench.engine_stack import answer_lengths, worker_args
from llmos_bench.load import poisson_arrivals, run_closed_loop, run_open_loop
from llmos_bench.stats import model_flops, percentile
from workers.dummy import build_dummy_model
from workers.reference_engine import ReferenceEngine
from workers.requests import Delta

torch.set_num_threads(1)

TINY_ARGS = [
    "bench",
    "engine",
    "--model",
    "dummy:llama-tiny",
    "--prompt-len",
    "8",
    "--new-tokens",
    "4",
    "--concurrency",
    "1,2",
    "--threads",
    "1",
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUN_KEYS = {"requests", "output_tokens", "wall_s", "output_tokens_per_s", "flops_per_s", "peak_fraction"}


def run_bench(*extra_args: str) -> dict:
    result = CliRunner().invoke(cli, [*TINY_ARGS, *extra_args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def is_positive(value: object) -> bool:
    return isinstance(value, float) and value > 0


class FakeEngine:
    """One token per running request per step; records how many ran at once."""

    def __init__(self, new_tokens: int) -> None:
        self.new_tokens = new_tokens
        self.generated: dict[str, int] = {}
        self.most_running = 0

    def add_request(self, request) -> None:
        assert request.sampling.max_tokens == self.new_tokens
        self.generated[request.request_id] = 0

    @property
    def has_work(self) -> bool:
        return bool(self.generated)

    def step(self) -> list[Delta]:
        self.most_running = max(self.most_running, len(self.generated))
        deltas = []
        for request_id in list(self.generated):
            self.generated[request_id] += 1
            is_finished = self.generated[request_id] == self.new_tokens
            deltas.append(Delta(request_id, token_ids=[7], is_finished=is_finished))
            if is_finished:
                del self.generated[request_id]
        return deltas


def test_json_line_has_every_figure_with_sane_types():
    summary = run_bench("--poisson-seconds", "0.2", "--json-only")

    for key in ("speedup_vs_sequential", "speedup_vs_static_batch", "peak_fraction", "peak_flops_per_s"):
        assert is_positive(summary[key]), key
    generate_batch = summary["baselines"]["generate_batch"]
    assert summary["speedup_vs_generate_batch"] is None or is_positive(summary["speedup_vs_generate_batch"])
    assert (generate_batch is None) == (summary["speedup_vs_generate_batch"] is None)
    assert (summary["model"], summary["device"], summary["compare_concurrency"]) == (
        "dummy:llama-tiny",
        "cpu",
        2,
    )
    assert summary["engine"] in {"Engine", "BatchedEngine", "PagedEngine"}
    rows = summary["small_linear_rows"]  # the tiny model fits in cache: not measured
    assert rows is None or (rows["how"], rows["timings"]) == ("default", [])
    assert [run["concurrency"] for run in summary["llmos"]] == [1, 2]
    for run in summary["llmos"]:
        assert RUN_KEYS | {"ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s"} <= set(run)
        assert run["output_tokens"] == run["requests"] * 4 == run["concurrency"] * 4
        assert is_positive(run["ttft_p50_s"]) and run["ttft_p50_s"] <= run["ttft_p99_s"]
        if summary["engine"] != "Engine":  # a cache holds at least what its tokens need
            assert run["kv_bytes_per_live_token"] >= summary["kv_bytes_per_token"] > 0
    for name in ("sequential", "static_batch"):
        baseline = summary["baselines"][name]
        assert RUN_KEYS <= set(baseline)
        assert baseline["output_tokens"] == baseline["requests"] * 4
    poisson = summary["poisson"]
    assert poisson["load"] == 0.8 and is_positive(poisson["rate_per_s"])
    if poisson["requests"]:
        assert {"ttft_p99_s", "e2e_p50_s", "e2e_p99_s"} <= set(poisson)


def test_rounds_alternate_and_the_ratios_come_from_their_medians():
    summary = run_bench("--poisson-seconds", "0", "--rounds", "3", "--json-only")

    assert summary["rounds"] == 3
    ratios = summary["round_speedups"]
    assert set(ratios) == {"sequential", "static_batch", "generate_batch"}
    assert all(len(values) == 3 for values in ratios.values())
    compared = next(run for run in summary["llmos"] if run["concurrency"] == 2)
    sequential = summary["baselines"]["sequential"]
    assert summary["speedup_vs_sequential"] == pytest.approx(
        compared["output_tokens_per_s"] / sequential["output_tokens_per_s"]
    )
    assert all(is_positive(value) for value in ratios["sequential"])


def test_table_comes_before_the_json_line():
    result = CliRunner().invoke(cli, [*TINY_ARGS, "--poisson-seconds", "0", "--skip-baselines"])
    lines = result.stdout.strip().splitlines()

    assert result.exit_code == 0, result.output
    assert any(line.startswith("RUN ") and "OUT TOK/S" in line for line in lines)
    summary = json.loads(lines[-1])
    assert summary["poisson"] is None
    assert summary["baselines"] == {"sequential": None, "static_batch": None, "generate_batch": None}
    assert summary["speedup_vs_sequential"] is None


def test_plot_writes_the_throughput_chart_as_a_png(tmp_path):
    charts = tmp_path / "charts"
    summary = run_bench("--poisson-seconds", "0", "--rounds", "1", "--json-only", "--plot", str(charts))

    assert summary["settings"]["plot"] == str(charts)
    assert sorted(path.name for path in charts.iterdir()) == ["engine_throughput.png"]
    assert (charts / "engine_throughput.png").read_bytes().startswith(PNG_MAGIC)


def test_the_paged_engine_is_measured_with_its_kv_footprint():
    summary = run_bench("--engine", "paged", "--skip-baselines", "--poisson-seconds", "0", "--json-only")

    assert summary["engine"] == "PagedEngine"
    for run in summary["llmos"]:
        assert run["output_tokens"] == run["concurrency"] * 4
        # the pools hold whole blocks, at least what the live tokens need
        assert run["kv_bytes_per_live_token"] >= summary["kv_bytes_per_token"] > 0


def test_an_unknown_engine_is_a_usage_error():
    result = CliRunner().invoke(cli, [*TINY_ARGS, "--engine", "fast"])

    assert result.exit_code == 2
    assert "--engine" in result.output and "auto, batched, paged" in result.output


def test_bad_concurrency_is_a_usage_error():
    result = CliRunner().invoke(cli, [*TINY_ARGS[:-4], "--concurrency", "0,2"])

    assert result.exit_code == 2
    assert "--concurrency" in result.output


def test_engine_falls_back_to_the_reference_engine_when_batched_is_missing(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "workers.batched_engine", None)  # import raises ImportError

    assert engine_class() is ReferenceEngine
    assert "measuring the reference Engine" in capsys.readouterr().err


def test_engine_prefers_batched_engine_when_present(monkeypatch):
    module = types.ModuleType("workers.batched_engine")
    module.BatchedEngine = type("BatchedEngine", (), {})
    monkeypatch.setitem(sys.modules, "workers.batched_engine", module)

    assert engine_class() is module.BatchedEngine


def test_closed_loop_keeps_concurrency_in_flight_until_all_are_done():
    engine = FakeEngine(new_tokens=3)
    result = run_closed_loop(engine, [[1, 2]] * 5, concurrency=2, new_tokens=3)

    assert engine.most_running == 2
    assert len(result.timings) == 5
    assert (result.num_generated_tokens, result.num_prompt_tokens) == (15, 10)
    assert all(t.arrival_s <= t.first_token_s <= t.finished_s for t in result.timings)


def test_open_loop_runs_every_arrival():
    offsets = poisson_arrivals(rate_per_s=200.0, duration_s=0.05, seed=3)
    result = run_open_loop(FakeEngine(new_tokens=2), [[1]] * len(offsets), offsets, new_tokens=2)

    assert offsets == poisson_arrivals(rate_per_s=200.0, duration_s=0.05, seed=3)
    assert offsets == sorted(offsets) and all(0 < offset < 0.05 for offset in offsets)
    assert result.num_generated_tokens == 2 * len(offsets)


def test_percentile_interpolates_and_skips_missing_values():
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0, float("nan")], 100) == 2.0
    assert percentile([float("nan")], 50) is None


def test_model_flops_count_the_head_only_for_generated_tokens():
    model = build_dummy_model("llama-tiny", "meta")
    head = model.lm_head.weight.numel()
    body = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)) - head

    assert model_flops(model, 10, 0) == 2 * body * 10
    assert model_flops(model, 10, 5) == 2 * body * 15 + 2 * head * 5


def test_write_profile_gives_simulated_workers_a_fitted_step_time(tmp_path):
    from workers.sim import LatencyProfile

    path = tmp_path / "profile.json"
    run_bench("--poisson-seconds", "0", "--skip-baselines", "--json-only", "--write-profile", str(path))
    profile = LatencyProfile.load(str(path))
    assert profile.base_ms >= 0 and profile.per_seq_ms >= 0 and profile.per_prefill_token_ms >= 0
    assert profile.source.startswith("llmos bench engine")


def test_a_shared_prefix_repeats_the_poisson_run_without_the_prefix_cache():
    summary = run_bench(
        "--poisson-seconds", "0.5", "--shared-prefix-len", "32", "--rounds", "1", "--json-only"
    )

    assert summary["settings"]["shared_prefix_len"] == 32
    off = summary["poisson_prefix_cache_off"]
    assert off["requests"] == summary["poisson"]["requests"]  # the same arrivals
    assert summary["prefix_cache_ttft_p50_gain"] is None or is_positive(summary["prefix_cache_ttft_p50_gain"])


@pytest.mark.e2e
def test_stack_requests_serve_the_same_answers_alone_and_through_a_real_stack():
    summary = run_bench(
        "--poisson-seconds", "0", "--skip-baselines", "--rounds", "2", "--stack-requests", "12", "--json-only"
    )

    stack = summary["stack"]
    lengths = answer_lengths(12, new_tokens=4, seed=0)
    assert (stack["requests"], stack["max_num_seqs"]) == (12, 2)  # the compared concurrency
    assert stack["mean_answer_tokens"] == sum(lengths) / 12
    assert stack["alone"]["output_tokens"] == sum(lengths)  # the engine alone ignores EOS
    assert stack["stack"]["requests"] == 12
    assert 12 <= stack["stack"]["output_tokens"] <= sum(lengths)  # the worker may stop at EOS
    assert len(stack["round_ratios"]) == 2 and all(is_positive(r) for r in stack["round_ratios"])
    assert summary["stack_vs_engine_throughput"] == stack["stack_vs_alone"]
    assert is_positive(stack["stack_vs_alone"])
    assert is_positive(stack["curve_throughput_ratio"]) and len(stack["curve_round_ratios"]) == 2
    burst = stack["burst"]  # max_num_seqs requests at once, to each side, every round
    assert (burst["requests"], burst["new_tokens"]) == (2, 4)
    for side in ("alone", "stack"):
        assert 0 < burst[side]["ttft_p50_ms"] <= burst[side]["ttft_p99_ms"]
    assert burst["ttft_p50_stack_vs_alone"] == burst["stack"]["ttft_p50_ms"] / burst["alone"]["ttft_p50_ms"]


def test_churn_requests_compare_mixed_steps_with_newcomers_prefilled_apart():
    summary = run_bench(
        "--engine",
        "batched",  # the paged engine has no separate prefill forward to compare with
        "--poisson-seconds",
        "0",
        "--skip-baselines",
        "--rounds",
        "2",
        "--churn-requests",
        "12",
        "--json-only",
    )

    churn = summary["churn"]
    lengths = answer_lengths(12, new_tokens=4, seed=0)
    assert (churn["requests"], churn["max_num_seqs"]) == (12, 2)
    assert churn["mixed"]["output_tokens"] == churn["apart"]["output_tokens"] == sum(lengths)
    assert len(churn["round_ratios"]) == 2 and all(is_positive(r) for r in churn["round_ratios"])
    assert summary["mixed_vs_apart_throughput"] == churn["mixed_vs_apart"]


def test_the_stack_worker_gets_the_benchs_dtype_and_quantization():
    config = EngineBenchConfig(device="cpu", dtype="float32", quantization="int8")
    args = worker_args(config, max_model_len=64, kv_tokens=128)
    assert args[args.index("--dtype") + 1] == "float32"
    assert args[args.index("--quantization") + 1] == "int8"
