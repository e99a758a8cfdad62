"""`llmos bench sched` at toy scale: the JSON line's shape and the workloads' seeding, never speed."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
from click.testing import CliRunner

from llmos.cli import cli
from llmos_bench.driver import Outcome, RunResult
from llmos_bench.plots import plot_sched
from llmos_bench.sched import scale_targets
from llmos_bench.sched_config import SchedBenchConfig
from llmos_bench.sched_runs import chat_workloads, offered_load, token_capacity_per_s
from llmos_bench.workload import BATCH, INTERACTIVE, BatchFlood, bounded_pareto, tenant_jobs
from workers.sim import LatencyProfile

HEADLINE_KEYS = (
    "interactive_ttft_p99_vs_idle",
    "interactive_ttft_p99_gain_vs_fcfs",
    "throughput_vs_fcfs",
    "mlfq_jct_gain_vs_fcfs",
    "fair_share_error",
    "scale_requests_per_s",
    "curve_throughput_ratio",
)
TOY_ARGS = [
    "--duration-s",
    "1",
    "--workers",
    "2",
    "--slots",
    "2",
    "--interactive-rate",
    "6",
    "--batch-max-tokens",
    "16",
    "--fair-warmup-s",
    "0.3",
    "--fair-window-s",
    "1",
    "--fair-max-tokens",
    "8",
    "--scale-workers",
    "10",
    "--scale-requests",
    "200",
    "--scale-in-flight",
    "20",
    "--scale-clients",
    "2",  # two load processes, as the full run has: their request ids must not collide
    "--scale-sim-processes",
    "1",
    "--decision-pending",
    "50",
    "--drain-timeout-s",
    "30",
]


def run_bench(*args: str) -> dict:
    result = CliRunner().invoke(cli, ["bench", "sched", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def is_png(path) -> bool:
    return path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@pytest.mark.e2e
def test_toy_run_reports_every_headline_figure_from_the_real_processes(tmp_path):
    summary = run_bench(*TOY_ARGS, "--json-only", "--plot", str(tmp_path / "charts"))

    for key in HEADLINE_KEYS:
        assert is_number(summary[key]) and summary[key] >= 0, key
    assert set(summary["decision_us_per_request"]) == {"10", "100", "1000"}
    assert all(is_number(v) and v > 0 for v in summary["decision_us_per_request"].values())
    chat = summary["chat"]
    assert list(chat["policies"]) == ["fcfs", "priority", "mlfq", "fair"]
    for run in [chat["idle"], *chat["policies"].values()]:
        assert run["errors"] == {} and run["is_drained"] is True
        assert is_number(run["interactive_ttft_p99_s"])
        assert run["interactive_ttft_p50_s"] <= run["interactive_ttft_p99_s"]
    for policy, run in chat["policies"].items():
        assert run["policy"] == policy
        assert run["batch_requests"] == chat["num_batch_jobs"] and run["batch_unfinished"] == 0
    fair = summary["fair"]
    assert set(fair["tokens"]) == set(fair["share_1s_range"]) == {"A", "B"}
    assert fair["target_ratio"] == 3 and fair["errors"] == {}
    assert set(fair["share_by_second"]) == {"A", "B"} and len(fair["share_by_second"]["A"]) >= 1
    assert "ttft_samples_s" not in chat, "the JSON line keeps percentiles, not every request"
    assert sorted(path.name for path in (tmp_path / "charts").iterdir()) == [
        "sched_fair_share.png",
        "sched_ttft.png",
    ]
    assert all(is_png(path) for path in (tmp_path / "charts").iterdir())
    scale = summary["scale"]
    assert (scale["completed"], scale["unfinished"], scale["errors"]) == (200, 0, {})
    assert {"broker", "scheduler", "kernel", "sim-0", "load"} <= set(scale["cpu_s"])
    assert scale["is_secure"] is True and summary["scale_insecure"]["is_secure"] is False
    assert summary["scale_insecure"]["completed"] == 200
    assert set(summary["targets"]) >= {
        "mlfq_jct_2x_better_than_fcfs",
        "fair_shares_within_10pct",
        "scale_2000_requests_per_s",
        "curve_throughput_0.85",
    }
    assert all(value in (True, False) for value in summary["targets"].values())


@pytest.mark.e2e
def test_a_sharded_scale_run_spreads_workers_and_clients_over_its_brokers(tmp_path):
    summary = run_bench(
        "--skip-chat", "--skip-fair", "--no-scale-insecure-baseline", "--decision-pending", "20",
        "--scale-brokers", "2", "--scale-sim-processes", "2", "--scale-workers", "4", "--slots", "2",
        "--scale-requests", "200", "--scale-in-flight", "20", "--scale-clients", "2",
        "--json-only", "--log-dir", str(tmp_path),
    )  # fmt: skip

    scale = summary["scale"]
    assert (scale["completed"], scale["unfinished"], scale["errors"], scale["brokers"]) == (200, 0, {}, 2)
    processes = {"broker", "broker-1", "scheduler", "scheduler-1", "kernel", "sim-0", "sim-1"}
    assert processes <= set(scale["cpu_s"])
    admissions = {
        name: (tmp_path / "scale" / name).read_text().count('"kind":"admission"')
        for name in ("audit.jsonl", "audit-1.jsonl")
    }
    assert summary["scale_targets"] == {"scale_10000_requests_per_s_with_1000_workers": None}  # 4 workers
    warm_ups = 2 * 2  # each broker's two workers, a request per slot
    assert sum(admissions.values()) == 200 + 2 * warm_ups
    # each load process had a broker of its own: half the requests each
    assert admissions == {"audit.jsonl": 100 + warm_ups, "audit-1.jsonl": 100 + warm_ups}


def test_the_10000_requests_per_s_target_is_judged_only_with_1000_workers():
    at_1000 = SchedBenchConfig(scale_workers=1000)
    key = "scale_10000_requests_per_s_with_1000_workers"
    assert scale_targets(at_1000, {"requests_per_s": 10_500.0}) == {key: True}
    assert scale_targets(at_1000, {"requests_per_s": 2_444.0}) == {key: False}
    assert scale_targets(SchedBenchConfig(scale_workers=200), {"requests_per_s": 20_000.0}) == {key: None}
    assert scale_targets(at_1000, None) == {key: None}


def test_more_brokers_than_load_or_sim_processes_is_a_usage_error():
    result = CliRunner().invoke(
        cli, ["bench", "sched", "--scale-brokers", "3", "--scale-clients", "2", "--scale-sim-processes", "4"]
    )

    assert result.exit_code == 2
    assert "--scale-brokers" in result.output


def test_skipped_workloads_give_null_figures_and_a_table():
    result = CliRunner().invoke(
        cli, ["bench", "sched", "--skip-chat", "--skip-fair", "--skip-scale", "--decision-pending", "20"]
    )
    lines = result.stdout.strip().splitlines()

    assert result.exit_code == 0, result.output
    assert any(line.startswith("POLICY") and "WORKERS US/REQ" in line for line in lines)
    summary = json.loads(lines[-1])
    for key in HEADLINE_KEYS:
        assert summary[key] is None, key
    assert summary["targets"]["fair_shares_within_10pct"] is None
    assert summary["targets"]["decision_time_far_below_linear"] in (True, False)
    assert (summary["chat"], summary["fair"], summary["scale"]) == (None, None, None)
    assert summary["scale_targets"] == {"scale_10000_requests_per_s_with_1000_workers": None}
    assert "  scale_10000_requests_per_s_with_1000_workers: not measured" in lines


def test_plot_draws_the_ttft_boxes_and_the_fair_shares_from_a_run_s_figures(tmp_path):
    samples = {
        "idle": {INTERACTIVE: [0.02, 0.03, 0.05]},
        "fcfs": {INTERACTIVE: [0.2, 0.9, 1.5], BATCH: [0.5, 2.0]},
        "priority": {INTERACTIVE: [0.03, 0.04], BATCH: [1.0, 3.0]},
    }
    fair = {
        "share_by_second": {"A": [0.2, None, 0.3], "B": [0.8, None, 0.7]},
        "target_shares": {"A": 0.25, "B": 0.75},
    }

    paths = plot_sched({"fair": fair}, samples, tmp_path)

    assert [path.name for path in paths] == ["sched_ttft.png", "sched_fair_share.png"]
    assert all(is_png(path) for path in paths)


def test_plot_draws_nothing_for_skipped_workloads(tmp_path):
    assert plot_sched({"fair": None}, {}, tmp_path / "charts") == []


def test_an_unknown_policy_is_a_usage_error():
    result = CliRunner().invoke(cli, ["bench", "sched", "--policies", "fcfs,lottery"])

    assert result.exit_code == 2
    assert "lottery" in result.output


def test_the_same_seed_gives_every_policy_the_same_jobs():
    config = SchedBenchConfig(duration_s=5, workers=2, slots=4)
    chat, flood = chat_workloads(config)

    assert chat.jobs(seed=3) == chat.jobs(seed=3) != chat.jobs(seed=4)
    batch = flood.jobs(seed=3)
    assert batch == flood.jobs(seed=3)
    assert [job.offset_s for job in batch[: flood.burst]] == [0.0] * 8, "a burst fills every slot"
    assert {job.tier for job in batch} == {BATCH}
    assert {job.tier for job in chat.jobs(seed=3)} == {INTERACTIVE}
    assert all(config.batch_min_tokens <= job.max_tokens <= config.batch_max_tokens for job in batch)


def test_the_batch_flood_alone_asks_for_the_batch_load_and_interactive_comes_on_top():
    config = SchedBenchConfig(batch_load=1.0)
    chat, flood = chat_workloads(config)

    flood_only = SchedBenchConfig(batch_load=1.0, interactive_rate=0.0)
    assert offered_load(flood_only, *chat_workloads(flood_only), counting_prefills=False) == pytest.approx(
        1.0
    )
    interactive_share = chat.rate_per_s * chat.mean_answer_tokens / token_capacity_per_s(config)
    assert offered_load(config, chat, flood, counting_prefills=False) == pytest.approx(
        1.0 + interactive_share, rel=1e-4
    )


def test_the_load_counting_prefills_is_the_load_asked_for_plus_what_prefills_stall(tmp_path):
    free_prefills = str(tmp_path / "free-prefills.json")
    LatencyProfile(base_ms=20.0, per_seq_ms=0.5, per_prefill_token_ms=0.0).save(free_prefills)
    config = SchedBenchConfig(batch_load=1.2, profile_file=free_prefills)
    workloads = chat_workloads(config)
    assert offered_load(config, *workloads, counting_prefills=True) == pytest.approx(
        offered_load(config, *workloads, counting_prefills=False)
    )

    dear = SchedBenchConfig(profile_file="workers/profiles/h100-llama-1b.json")
    assert offered_load(dear, *chat_workloads(dear), counting_prefills=True) > 1.35
    default = SchedBenchConfig()  # 0.02 ms per prefill token: about 3% more
    nominal = offered_load(default, *chat_workloads(default), counting_prefills=False)
    assert nominal < offered_load(default, *chat_workloads(default), counting_prefills=True) < nominal * 1.05


def test_bounded_pareto_stays_in_bounds_with_a_heavy_tail():
    rng = random.Random(0)
    draws = [bounded_pareto(rng, alpha=1.2, low=8, high=256) for _ in range(5000)]

    assert min(draws) == 8 and max(draws) <= 256
    median = sorted(draws)[len(draws) // 2]
    assert sum(draws) / len(draws) > 1.5 * median, "the mean sits well above the median"


def test_a_declared_max_tokens_marks_each_answers_length_in_its_prompt() -> None:
    from workers.sim import stop_at_tokens

    exact = BatchFlood(burst=4, rate_per_s=20, duration_s=1, pareto_alpha=1.2, min_tokens=8, max_tokens=64)
    loose = dataclasses.replace(exact, declared_max_tokens=256)
    for tight, job in zip(exact.jobs(seed=3), loose.jobs(seed=3), strict=True):
        assert (job.max_tokens, job.answer_tokens, job.offset_s) == (256, tight.max_tokens, tight.offset_s)
        assert stop_at_tokens(job.prompt, job.max_tokens) == tight.max_tokens
        assert tight.answer_tokens == 0 and stop_at_tokens(tight.prompt, tight.max_tokens) == tight.max_tokens


def test_tenant_jobs_carry_the_tenant_and_stop_at_the_limit():
    jobs = list(tenant_jobs("B", "standard", max_tokens=16, seed=0, limit=3))

    assert [(job.group, job.tenant, job.tier, job.max_tokens) for job in jobs] == [
        ("B", "B", "standard", 16)
    ] * 3


def test_tokens_in_window_count_only_chunks_before_the_arrivals_stopped():
    result = RunResult(
        started_s=100.0,
        window_s=2.0,
        ended_s=105.0,
        outcomes=[Outcome("batch", 100.0)],
        chunks=[(100.5, "batch", 1), (101.9, "interactive", 2), (102.5, "batch", 4)],
    )

    assert result.tokens_in_window() == 3
    assert result.tokens_in_window("batch") == 1
