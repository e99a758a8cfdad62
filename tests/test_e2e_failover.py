"""Failures of real processes: a worker killed mid-stream, the scheduler down."""

from __future__ import annotations

import threading
import time

import pytest
from e2e_helpers import Reference, StreamedAnswer
from stack import Stack

pytestmark = pytest.mark.e2e

PROMPTS = [f"Request number {i}: tell me a long story about the sea" for i in range(8)]
MAX_TOKENS = 480  # long enough that worker-0 is still mid-answer when the kill lands, on a loaded machine too


def test_sigkill_one_of_two_workers_mid_stream_every_client_gets_one_whole_answer(tiny_model_dir, tmp_path):
    reference = Reference(tiny_model_dir)
    answers = {i: StreamedAnswer() for i in range(len(PROMPTS))}
    errors: list[BaseException] = []

    with Stack(tiny_model_dir, tmp_path, num_workers=2) as stack:

        def one_client(index: int) -> None:
            try:
                with stack.client() as client:
                    request_id = client.submit(PROMPTS[index], max_tokens=MAX_TOKENS)
                    answers[index].chunks.extend(client.stream(request_id))
                    answers[index].result = client.result(request_id)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=one_client, args=(i,)) for i in range(len(PROMPTS))]
        for thread in threads:
            thread.start()
        # kill as soon as the broker sees worker-0 running requests: the tiny model makes
        # a token in a millisecond or two, so waiting for every client's first chunk
        # could let worker-0 finish its share first
        wait_until_running_on(stack, "worker-0")
        stack.kill("worker-0")
        for thread in threads:
            thread.join(timeout=300)
        assert errors == [], stack.logs()

    restarted = [a for a in answers.values() if a.result.num_restarts > 0]
    assert restarted, "no request was running on the killed worker"
    assert all(a.result.worker_id == "worker-1" for a in restarted)
    for index, answer in answers.items():
        answer.assert_whole()
        assert answer.token_ids == reference.greedy(PROMPTS[index], MAX_TOKENS)


def wait_until_running_on(stack: Stack, worker_id: str, attempts: int = 2000) -> None:
    """Poll the broker's status until `worker_id` runs a request (bounded by count)."""
    with stack.client() as client:
        for _ in range(attempts):
            if any(w.worker_id == worker_id and w.num_running > 0 for w in client.status().workers):
                return
            time.sleep(0.005)
    raise AssertionError(f"{worker_id} never ran a request")


def test_broker_serves_in_its_own_order_when_the_scheduler_is_down(tiny_model_dir, tmp_path):
    with Stack(tiny_model_dir, tmp_path, num_workers=1) as stack:
        stack.kill("scheduler")
        with stack.client() as client:
            results = [client.generate(f"prompt {i}", max_tokens=4) for i in range(3)]
            status = client.status()
    assert [r.usage.generated_tokens for r in results] == [4, 4, 4]
    assert not status.scheduler_online
    assert status.scheduler_policy == "priority"
    assert "falls back" in (tmp_path / "broker.log").read_text()
