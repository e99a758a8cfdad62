"""Admission, deadlines, tiers and vanished clients through the real processes.

One worker with a single slot makes queueing deterministic: whatever is
submitted while a long request runs must wait in the broker's queues.
"""

from __future__ import annotations

import json
import time

import pytest
import zmq
from stack import Stack

from llmos.errors import DeadlineExceeded, QueueFull, QuotaExceeded
from llmos.wire import pb

pytestmark = pytest.mark.e2e

LONG = 2000  # tokens (the tiny model holds 2048): about two seconds of work on CI, so it is surely running


@pytest.fixture(scope="module")
def stack(tiny_model_dir, tmp_path_factory):
    tier_limits = {"batch": {"max_queue_depth": 2}}
    with Stack(
        tiny_model_dir,
        tmp_path_factory.mktemp("logs"),
        num_workers=1,
        broker_args=("--tier-limits", json.dumps(tier_limits), "--tenant-quotas", "alice=1"),
        worker_args=("--max-num-seqs", "1"),
    ) as running:
        yield running


def start_long(client, **params) -> str:
    """Submit a long request and wait until it streams: the only slot is taken."""
    request_id = client.submit("Keep talking for a long while", max_tokens=LONG, **params)
    next(iter(client.stream(request_id)))
    return request_id


def wait_until_idle(stack: Stack, attempts: int = 200) -> None:
    with stack.client() as client:
        for _ in range(attempts):
            status = client.status()
            if status.num_running == 0 and all(t.depth == 0 for t in status.tiers):
                return
            time.sleep(0.05)
    raise AssertionError(f"stack never went idle: {status}")


def test_a_full_tier_answers_queue_full_with_a_retry_hint(stack):
    with stack.client() as client:
        long_id = start_long(client, tier="batch")
        queued = [client.submit("wait", max_tokens=2, tier="batch") for _ in range(2)]
        with pytest.raises(QueueFull) as caught:
            client.submit("one too many", max_tokens=2, tier="batch")
        assert caught.value.retry_after_ms > 0
        client.submit("other tiers still admit", max_tokens=2, tier="standard")
        client.cancel(long_id)
    wait_until_idle(stack)
    assert queued


def test_tenant_quota_is_enforced_per_tenant(stack):
    with stack.client() as client:
        long_id = start_long(client, tenant="alice")
        with pytest.raises(QuotaExceeded) as caught:
            client.submit("second", max_tokens=2, tenant="alice")
        assert caught.value.retry_after_ms > 0
        bob = client.submit("bob is fine", max_tokens=2, tenant="bob")
        client.cancel(long_id)
        assert client.result(bob).usage.generated_tokens == 2
    wait_until_idle(stack)


def test_higher_tier_waiting_requests_are_served_first(stack):
    with stack.client() as client:
        long_id = start_long(client, tier="batch")
        batch = client.submit("batch job", max_tokens=3, tier="batch")
        interactive = client.submit("chat user", max_tokens=3, tier="interactive")
        client.cancel(long_id)
        results = {
            name: client.result(request_id)
            for name, request_id in (("batch", batch), ("interactive", interactive))
        }
    # one slot: the interactive request, though submitted later, was dispatched first
    assert results["interactive"].usage.queue_time_s < results["batch"].usage.queue_time_s
    wait_until_idle(stack)


def test_deadlines_stop_queued_and_running_requests(stack):
    with stack.client() as client:
        running = client.submit("Keep talking for a long while", max_tokens=LONG, deadline_ms=700)
        queued = client.submit("I cannot wait", max_tokens=4, deadline_ms=300)
        with pytest.raises(DeadlineExceeded):
            client.result(queued)
        result = client.result(running)
    assert result.finish_reason == pb.FINISH_REASON_DEADLINE
    assert 0 < result.usage.generated_tokens < LONG
    wait_until_idle(stack)


def test_a_client_that_disconnects_frees_its_running_request(stack):
    context = zmq.Context.instance()
    client = stack.client()
    request_id = client.submit("Keep talking for a long while", max_tokens=LONG)
    next(iter(client.stream(request_id)))
    client.close()  # no cancel: the broker notices the closed connection
    wait_until_idle(stack)
    with stack.client() as other:
        assert other.generate("next", max_tokens=2).usage.generated_tokens == 2
    assert context is not None
