"""`llmos bench chaos` at toy scale: what is lost or duplicated through kills, never speed."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from llmos.cli import cli
from llmos.wire import pb
from llmos_bench.chaos_load import ChaosJob, End, Outcome, chaos_jobs
from llmos_bench.chaos_schedule import chaos_schedule
from workers.sim import SIM_TOKEN_ID, SIM_TOKEN_TEXT


def run_bench(*args: str) -> dict:
    result = CliRunner().invoke(cli, ["bench", "chaos", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def chunk(index: int, num_tokens: int) -> pb.TokenChunk:
    return pb.TokenChunk(
        request_id="r", token_ids=[SIM_TOKEN_ID] * num_tokens, text=SIM_TOKEN_TEXT * num_tokens, index=index
    )


def streamed(max_tokens: int, *chunks: pb.TokenChunk) -> Outcome:
    outcome = Outcome(ChaosJob("r", "standard", max_tokens))
    for message in chunks:
        outcome.add_chunk(message, now_s=1.0)
    outcome.finish(pb.GenerateResult(request_id="r"), now_s=2.0)
    return outcome


@pytest.mark.e2e
def test_a_broker_kill_and_a_worker_kill_lose_and_duplicate_nothing(tmp_path):
    summary = run_bench(
        "--requests", "60", "--workers", "2", "--clients", "4", "--max-tokens", "8",
        "--schedule", "broker,sim-0", "--log-dir", str(tmp_path), "--json-only",
    )  # fmt: skip

    assert summary["kills_done"] == 2
    assert [kill["name"] for kill in summary["kill_log"]] == ["broker", "sim-0"]
    assert (summary["lost"], summary["duplicated"], summary["errored"]) == (0, 0, 0)
    assert summary["completed"] + summary["refused"] == 60
    assert summary["wrongly_refused"] == 0 and summary["unfinished"] == 0
    assert summary["recovery"]["broker"]["kills"] == 1 and summary["recovery"]["worker"]["kills"] == 1
    assert {"lost", "duplicated", "errored", "recovery_p99_s"} <= set(summary)


def test_the_seeded_schedule_kills_the_broker_twice_scheduler_and_kernel_then_workers():
    schedule = chaos_schedule(num_kills=10, num_workers=3, seed=7)

    assert schedule == chaos_schedule(num_kills=10, num_workers=3, seed=7)
    assert schedule.count("broker") == 2
    assert schedule.count("scheduler") == schedule.count("kernel") == 1
    assert {name for name in schedule if name.startswith("sim-")} <= {"sim-0", "sim-1", "sim-2"}
    assert len(schedule) == 10


def test_the_workload_is_seeded_and_mixes_the_tiers():
    jobs = chaos_jobs(300, max_tokens=16, seed=1)

    assert jobs == chaos_jobs(300, max_tokens=16, seed=1) != chaos_jobs(300, max_tokens=16, seed=2)
    assert {job.tier for job in jobs} == {"interactive", "standard", "batch"}
    assert all(1 <= job.max_tokens <= 16 for job in jobs)
    assert len({job.request_id for job in jobs}) == 300


def test_a_whole_answer_in_consecutive_chunks_completes():
    outcome = streamed(5, chunk(0, 2), chunk(2, 3))

    assert (outcome.end, outcome.is_duplicated, outcome.num_tokens) == (End.COMPLETED, False, 5)


def test_a_chunk_overlapping_tokens_already_streamed_is_a_duplicate():
    outcome = streamed(5, chunk(0, 3), chunk(2, 3))

    assert outcome.is_duplicated


def test_a_short_answer_is_an_error_and_not_a_duplicate():
    outcome = streamed(5, chunk(0, 3))

    assert (outcome.end, outcome.is_duplicated) == (End.ERRORED, False)
    assert outcome.error == "short: 3 of 5 tokens"


def test_an_unknown_process_in_the_schedule_is_a_usage_error():
    result = CliRunner().invoke(cli, ["bench", "chaos", "--schedule", "broker,sim-9"])

    assert result.exit_code == 2
    assert "sim-9" in result.output
