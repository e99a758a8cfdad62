"""A model worker drains: SIGTERM or the broker's Drain, against a fake broker and kernel.

It tells the broker it drains, runs to its end what it already has, hands back
a dispatch that arrives later (a final PREEMPTED delta with no token, which the
broker re-queues), then says Disconnect to both and exits 0; when its drain
timeout passes first, or a second signal comes, it leaves with what is unfinished.
"""

from __future__ import annotations

import signal

import pytest
from test_worker_service import (
    REPLY_TIMEOUT_S,
    STARTUP_TIMEOUT_S,
    FakePeer,
    Reference,
    answer_as_broker,
    answer_as_kernel,
    collect_answers,
    dispatch,
    running_worker,
)

from llmos.wire import pb

pytestmark = pytest.mark.e2e

LONG_TOKENS = 1500  # seconds of decoding on a CPU: still running when the drain starts
LONG_PROMPT = "Once upon a time"  # llmos-tiny's greedy answer to it runs past LONG_TOKENS (no eos)
EXIT_TIMEOUT_S = 30


def handed_back(request_id: str) -> pb.RequestDelta:
    return pb.RequestDelta(request_id=request_id, is_finished=True, finish_reason=pb.FINISH_REASON_PREEMPTED)


@pytest.fixture(scope="module")
def reference(tiny_model_dir) -> Reference:
    return Reference(tiny_model_dir)


def expect_drain(broker: FakePeer) -> tuple[pb.Drain, list[pb.StepProgress]]:
    """The worker's Drain, and the progress that came before it (kept, not passed over)."""
    progress = []
    while True:
        _, name, message = broker.inbox.get(timeout=REPLY_TIMEOUT_S)
        if name == "drain":
            return message, progress
        if name == "progress":
            progress.append(message)


def test_sigterm_finishes_the_running_request_hands_back_a_new_one_and_exits_0(
    tiny_model_dir,
    reference,
    tmp_path,
):
    with (
        FakePeer(answer_as_broker) as broker,
        FakePeer(answer_as_kernel) as kernel,
        running_worker(
            tiny_model_dir, broker.address, kernel.address, 1000, tmp_path, "--kv-cache-tokens", "4096"
        ) as worker,
    ):
        identity, _ = broker.expect("worker_register", STARTUP_TIMEOUT_S)
        broker.send(identity, dispatch("long", max_tokens=LONG_TOKENS, prompt=LONG_PROMPT))
        _, first = broker.expect("progress")
        worker.send_signal(signal.SIGTERM)
        drain, before_drain = expect_drain(broker)
        broker.send(identity, dispatch("late", max_tokens=4))
        answers = collect_answers(broker, {"long", "late"}, seen=(first, *before_drain))
        _, goodbye = broker.expect("disconnect")
        _, kernel_goodbye = kernel.expect("disconnect")
        assert worker.wait(EXIT_TIMEOUT_S) == 0

    assert drain.reason == "SIGTERM"
    assert answers["late"].deltas == [handed_back("late")]
    assert answers["long"].final.finish_reason == pb.FINISH_REASON_LENGTH
    assert answers["long"].token_ids == reference.greedy(LONG_PROMPT, LONG_TOKENS)
    assert goodbye.reason == kernel_goodbye.reason == "drained (SIGTERM)"
    assert "draining (SIGTERM): 1 requests to finish" in (tmp_path / "worker.log").read_text()


def test_a_drain_the_broker_asks_for_ends_at_its_timeout_with_the_request_unfinished(
    tiny_model_dir, tmp_path
):
    with (
        FakePeer(answer_as_broker) as broker,
        FakePeer(answer_as_kernel) as kernel,
        running_worker(
            tiny_model_dir,
            broker.address,
            kernel.address,
            1000,
            tmp_path,
            "--kv-cache-tokens",
            "4096",
            "--drain-timeout-s",
            "0.2",
        ) as worker,
    ):
        identity, _ = broker.expect("worker_register", STARTUP_TIMEOUT_S)
        broker.send(identity, dispatch("long", max_tokens=LONG_TOKENS, prompt=LONG_PROMPT))
        broker.expect("progress")
        broker.send(identity, pb.Drain(reason="operator"))
        _, drain = broker.expect("drain")
        _, goodbye = broker.expect("disconnect")
        assert worker.wait(EXIT_TIMEOUT_S) == 0

    assert drain.reason == "the broker: operator"
    assert goodbye.reason == "left with 1 requests unfinished (the broker: operator)"


def test_a_second_sigterm_leaves_at_once(tiny_model_dir, tmp_path):
    with (
        FakePeer(answer_as_broker) as broker,
        FakePeer(answer_as_kernel) as kernel,
        running_worker(
            tiny_model_dir, broker.address, kernel.address, 1000, tmp_path, "--kv-cache-tokens", "4096"
        ) as worker,
    ):
        identity, _ = broker.expect("worker_register", STARTUP_TIMEOUT_S)
        broker.send(identity, dispatch("long", max_tokens=LONG_TOKENS, prompt=LONG_PROMPT))
        broker.expect("progress")
        worker.send_signal(signal.SIGTERM)
        broker.expect("drain")
        worker.send_signal(signal.SIGTERM)
        _, goodbye = broker.expect("disconnect")
        assert worker.wait(EXIT_TIMEOUT_S) == 0

    assert goodbye.reason == "left with 1 requests unfinished (SIGTERM)"
