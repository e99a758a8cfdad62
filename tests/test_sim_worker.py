"""Simulated workers speak the real protocol through the real broker and kernel."""

from __future__ import annotations

import time

import pytest
from stack import Stack

from llmos.client import query_kernel
from llmos.wire import pb

pytestmark = pytest.mark.e2e


def start_sim_workers(stack: Stack, count: int) -> None:
    """`count` simulated workers (ids sim-0... , or sim for one) in one process, as a user
    starts them, serving the model "simulated"; returns once the broker has them all."""
    stack.start_process(
        "sim",
        "worker",
        "--engine",
        "sim",
        "--sim-workers",
        str(count),
        "--worker-id",
        "sim",
        "--model-name",
        "simulated",
        *stack.worker_links(),
    )
    stack.wait_ready(num_workers=count)


def tier_status(status: pb.StatusReply, tier: str) -> pb.TierStatus:
    return next(entry for entry in status.tiers if entry.tier == tier)


def test_simulated_workers_answer_through_the_real_stack(tmp_path):
    stack = Stack(model_dir=tmp_path, log_dir=tmp_path, num_workers=0)
    with stack:
        start_sim_workers(stack, 5)
        with stack.client() as client:
            ids = [client.submit(f"prompt {i} " * 8, max_tokens=8, tier="batch") for i in range(20)]
            results = [client.result(request_id) for request_id in ids]
            status = client.status()
        view = query_kernel(stack.kernel_address, timeout_s=10)
    assert [r.usage.generated_tokens for r in results] == [8] * 20
    assert {r.model for r in results} == {"simulated"}
    assert len({r.worker_id for r in results}) > 1, "placement spread the load"
    assert sorted(w.worker_id for w in status.workers) == [f"sim-{i}" for i in range(5)]
    # simulated answers run to their max_tokens: the scheduler is told the batch tier's fill
    batch = tier_status(status, "batch")
    assert (batch.num_answers, batch.answer_fill) == (20, 1.0)
    assert len(view.workers) == 5 and all(w.kv_blocks_total > 0 for w in view.workers)


def test_final_only_answers_from_simulated_workers_hold_every_token(tmp_path):
    """Their workers hold the tokens back between reports (workers.progress_hold): the
    result still has them all, and its first token's time is the first report's."""
    stack = Stack(model_dir=tmp_path, log_dir=tmp_path, num_workers=0)
    with stack:
        start_sim_workers(stack, 2)
        with stack.client() as client:
            ids = [client.submit(f"whole {i} " * 8, max_tokens=20, stream=False) for i in range(6)]
            results = [client.result(request_id) for request_id in ids]
    assert [len(r.token_ids) for r in results] == [20] * 6
    assert [r.usage.generated_tokens for r in results] == [20] * 6
    assert {r.finish_reason for r in results} == {pb.FINISH_REASON_LENGTH}
    assert all(0 < r.usage.time_to_first_token_s < r.usage.total_time_s for r in results)


def test_a_restarted_kernel_hears_each_simulated_worker_register_once(tmp_path):
    """The restarted kernel refuses every message the workers sent before they register
    again (UNKNOWN_WORKER): one round of registrations answers all of those refusals."""
    stack = Stack(model_dir=tmp_path, log_dir=tmp_path, num_workers=0)
    with stack:
        start_sim_workers(stack, 10)
        stack.kill("kernel")
        stack.start_kernel()
        with stack.client() as client:
            ids = [client.submit(f"after {i} " * 8, max_tokens=8, tier="batch") for i in range(40)]
            results = [client.result(request_id) for request_id in ids]
        for _ in range(100):  # the round may still be on its way
            view = query_kernel(stack.kernel_address, timeout_s=10)
            if len(view.workers) == 10:
                break
            time.sleep(0.1)
    assert [r.usage.generated_tokens for r in results] == [8] * 40
    assert len(view.workers) == 10
    # kernel.log holds both runs: ten registrations at the start, ten after the restart
    assert (tmp_path / "kernel.log").read_text().count(" registered: ") == 20


def test_a_prompt_may_end_the_simulated_answer_before_its_max_tokens(tmp_path):
    """As a real model stops at its end-of-sequence token: the answer ends with `eos`,
    and the batch tier's answer fill tells the scheduler the bound is loose."""
    from workers.sim import sim_answer_tokens_hook

    stack = Stack(model_dir=tmp_path, log_dir=tmp_path, num_workers=0)
    with stack:
        start_sim_workers(stack, 1)
        with stack.client() as client:
            ids = [
                client.submit(f"prompt {i} {sim_answer_tokens_hook(4)}", max_tokens=16, tier="batch")
                for i in range(4)
            ]
            ids.append(client.submit(f"prompt {sim_answer_tokens_hook(40)}", max_tokens=16, tier="batch"))
            results = [client.result(request_id) for request_id in ids]
            status = client.status()
    assert [(r.usage.generated_tokens, r.finish_reason) for r in results] == [
        (4, pb.FINISH_REASON_EOS)
    ] * 4 + [(16, pb.FINISH_REASON_LENGTH)]
    batch = tier_status(status, "batch")
    assert (batch.num_answers, batch.answer_fill) == (5, pytest.approx((4 * 0.25 + 1) / 5))


@pytest.mark.parametrize(
    "prompt, max_tokens, tokens",
    [
        ("no hook", 16, 16),
        ("sim-answer-tokens=5 first", 16, 5),
        ("last sim-answer-tokens=99", 16, 16),
        ("sim-answer-tokens=0", 16, 1),
    ],
)
def test_the_answer_tokens_hook_sets_how_many_tokens_a_simulated_answer_makes(prompt, max_tokens, tokens):
    from workers.sim import stop_at_tokens

    assert stop_at_tokens(prompt, max_tokens) == tokens


def test_latency_profile_grows_with_the_batch():
    from workers.sim import LatencyProfile

    profile = LatencyProfile(base_ms=2.0, per_seq_ms=0.5, per_prefill_token_ms=0.01, per_context_token_us=0.1)
    assert profile.step_s(1, 0, 100) < profile.step_s(8, 0, 800) < profile.step_s(8, 512, 800)
    assert profile.step_s(4, 100, 1000) == pytest.approx((2.0 + 2.0 + 1.0) / 1e3 + 100e-6)


def test_profile_fit_recovers_a_linear_step_time(tmp_path):
    from workers.sim import LatencyProfile

    truth = LatencyProfile(base_ms=10.0, per_seq_ms=2.0, per_prefill_token_ms=0.5, per_context_token_us=0.0)
    tpot = {c: truth.step_s(c, 0, 0) for c in (1, 8, 32)}
    ttft_alone = truth.step_s(1, 32, 0)
    fitted = LatencyProfile.fit(tpot, ttft_alone, prompt_len=32, source="test")
    assert (fitted.base_ms, fitted.per_seq_ms, fitted.per_prefill_token_ms) == pytest.approx((10.0, 2.0, 0.5))
    fitted.save(str(tmp_path / "profile.json"))
    assert LatencyProfile.load(str(tmp_path / "profile.json")) == fitted


def test_a_preempted_request_dispatched_again_prefills_only_what_it_made_since():
    from workers.sim import LatencyProfile, SimRequest, SimWorker

    worker = SimWorker("w", socket=None, max_num_seqs=4, kv_blocks_total=64)
    profile = LatencyProfile(base_ms=0, per_seq_ms=0, per_prefill_token_ms=1.0, per_context_token_us=0)
    request = SimRequest(
        "r", prompt_tokens=40, max_tokens=20, num_generated=0, num_blocks=4, prefix_hashes=(7, 8)
    )
    worker.waiting.append(request)
    worker.admit()
    assert worker.begin_step(profile) == pytest.approx(0.040)  # the whole prompt
    worker.end_step()
    for _ in range(4):
        assert worker.begin_step(profile) == pytest.approx(0.0)
        worker.end_step()
    assert request.num_generated == 5

    worker.drop("r")
    worker.keep_computed(request)  # told to preempt it
    assert worker.cached_prefix_hashes() == [7, 8] and worker.is_cache_report_due

    again = SimRequest(
        "r", prompt_tokens=40, max_tokens=20, num_generated=5, num_blocks=4, prefix_hashes=(7, 8)
    )
    worker.take_computed(again)
    worker.waiting.append(again)
    worker.admit()
    assert worker.begin_step(profile) == pytest.approx(0.001)  # only the last token made
    assert worker.cached_prefix_hashes() == []


def test_kept_tokens_stay_within_half_the_kv_capacity_least_recently_kept_going_first():
    from workers.sim import SimRequest, SimWorker

    worker = SimWorker("w", socket=None, max_num_seqs=4, kv_blocks_total=16, block_size=16)
    for index in range(4):  # 100 tokens each against 128 kept at most (half of 256)
        worker.keep_computed(
            SimRequest(
                f"r{index}",
                prompt_tokens=100,
                max_tokens=8,
                num_generated=0,
                num_blocks=7,
                num_cached_tokens=100,
                prefix_hashes=(index,),
            )
        )

    assert list(worker.cached) == ["r3"] and worker.num_kept_tokens == 100
    worker.keep_computed(
        SimRequest(
            "r3",
            prompt_tokens=20,
            max_tokens=8,
            num_generated=0,
            num_blocks=2,
            num_cached_tokens=20,
            prefix_hashes=(3,),
        )
    )
    assert worker.num_kept_tokens == 20  # kept again: counted once, at its new size
    worker.take_computed(SimRequest("r3", prompt_tokens=20, max_tokens=8, num_generated=1, num_blocks=2))
    assert worker.num_kept_tokens == 0 and worker.cached_prefix_hashes() == []


def test_a_request_told_to_preempt_mid_step_keeps_the_steps_token_then_leaves():
    from workers.sim import SIM_TOKEN_ID, LatencyProfile, SimRequest, SimWorker

    worker = SimWorker("w", socket=None, max_num_seqs=4, kv_blocks_total=64)
    request = SimRequest(
        "r", prompt_tokens=8, max_tokens=20, num_generated=3, num_blocks=2, prefix_hashes=(7,)
    )
    waiting = SimRequest("late", prompt_tokens=8, max_tokens=20, num_generated=0, num_blocks=2)
    worker.waiting.append(request)
    worker.admit()
    worker.begin_step(LatencyProfile())
    worker.waiting.append(waiting)
    worker.admit()  # admitted mid-step: not in the step in flight

    assert worker.defer_preempt("r") and not worker.defer_preempt("late")
    assert "r" in worker.running  # until the step ends, as a real engine takes commands between steps
    assert worker.end_step() == [request] and request.num_generated == 4
    assert [(d.request_id, list(d.token_ids), d.finish_reason) for d in worker.pending_deltas] == [
        ("r", [SIM_TOKEN_ID], pb.FINISH_REASON_UNSPECIFIED),
        ("r", [], pb.FINISH_REASON_PREEMPTED),
    ]
    assert list(worker.running) == ["late"] and worker.num_blocks_used == 2
    assert worker.cached_prefix_hashes() == [7]  # what it computed stays for its resume


def test_the_next_step_starts_when_the_last_was_due_unless_the_loop_is_far_behind():
    """The loop notices a step's end up to a couple of milliseconds late; counting the
    next step from then would stretch every step past the profile's figure."""
    from workers.sim import MAX_STEP_LATENESS_S, step_start_s

    assert step_start_s(due_s=10.0, now_s=10.0) == 10.0
    assert step_start_s(due_s=10.0, now_s=10.0 + MAX_STEP_LATENESS_S / 2) == 10.0
    assert step_start_s(due_s=10.0, now_s=10.5) == 10.5
