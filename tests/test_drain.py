"""Draining through the real stack: a simulated worker under a long request leaves on
SIGTERM or `llmos drain` after finishing it, while another takes the new requests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from service_process import wait_until
from stack import Stack

from llmos.client import Client
from llmos.wire import pb
from workers.sim import LatencyProfile

pytestmark = pytest.mark.e2e

# 20 ms a step: the long answer runs for seconds, well past a SIGTERM sent once it started
SLOW_PROFILE = LatencyProfile(
    base_ms=20.0, per_seq_ms=0.0, per_prefill_token_ms=0.0, per_context_token_us=0.0
)
LONG_TOKENS = 200
WORKER_IDS = ("drain-a", "drain-b")
EXIT_TIMEOUT_S = 60


@dataclass
class LongRequest:
    """Two simulated workers, each its own process, and a long request running on one."""

    stack: Stack
    client: Client
    request_id: str
    busy: str  # the worker running it
    idle: str

    def worker_ids(self) -> list[str]:
        return sorted(w.worker_id for w in self.stack.status().workers)


@contextmanager
def long_request_on_one_of_two_workers(tmp_path: Path) -> Iterator[LongRequest]:
    profile_path = tmp_path / "profile.json"
    SLOW_PROFILE.save(str(profile_path))
    with Stack(model_dir=tmp_path, log_dir=tmp_path, num_workers=0) as stack:
        for worker_id in WORKER_IDS:
            stack.start_sim_worker("simulated", worker_id, "--profile", str(profile_path), num_ready=0)
        stack.wait_ready(num_workers=2)
        with stack.client() as client:
            request_id = client.submit("a long story", max_tokens=LONG_TOKENS)
            busy = running_worker(stack)
            idle = next(worker_id for worker_id in WORKER_IDS if worker_id != busy)
            yield LongRequest(stack, client, request_id, busy, idle)


def running_worker(stack: Stack) -> str:
    """The id of the one worker the broker says runs a request, once one does."""
    busy: list[str] = []

    def is_running() -> bool:
        busy[:] = [w.worker_id for w in stack.status().workers if w.num_running > 0]
        return bool(busy)

    wait_until(is_running, "a worker runs the long request")
    return busy[0]


def assert_drained(long: LongRequest) -> None:
    """The long answer is whole and came from the drained worker, which exited 0 and
    left the broker; a new request goes to the other worker."""
    answer = long.client.result(long.request_id)
    process = long.stack.processes[long.busy]
    assert process.wait(EXIT_TIMEOUT_S) == 0
    wait_until(lambda: long.worker_ids() == [long.idle], f"the broker forgets {long.busy}")
    later = long.client.generate("a short one", max_tokens=3)

    assert (answer.finish_reason, answer.usage.generated_tokens) == (pb.FINISH_REASON_LENGTH, LONG_TOKENS)
    assert (answer.worker_id, answer.num_restarts) == (long.busy, 0)
    assert (later.worker_id, later.usage.generated_tokens) == (long.idle, 3)


def test_sigterm_drains_a_worker_under_a_long_request(tmp_path):
    with long_request_on_one_of_two_workers(tmp_path) as long:
        long.stack.processes[long.busy].terminate()
        assert_drained(long)


def llmos_drain(stack: Stack, worker_id: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmos", "drain", worker_id, "--broker-address", stack.broker_address],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_llmos_drain_drains_the_named_worker_and_refuses_an_unknown_one(tmp_path):
    with long_request_on_one_of_two_workers(tmp_path) as long:
        unknown = llmos_drain(long.stack, "nobody")
        drained = llmos_drain(long.stack, long.busy)
        status = long.stack.status()
        assert_drained(long)

    assert (unknown.returncode, unknown.stdout) == (3, "")
    assert unknown.stderr == "error: UNKNOWN_WORKER: no worker 'nobody' is registered\n"
    assert (drained.returncode, drained.stderr) == (0, "")
    assert drained.stdout == f"worker {long.busy} is draining: 1 request to finish\n"
    assert {w.worker_id: w.is_draining for w in status.workers} == {long.busy: True, long.idle: False}
