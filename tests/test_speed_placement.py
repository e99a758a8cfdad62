"""A mixed pool serving one model: the broker measures each worker's speed from the
requests it finishes, and placement gives the faster worker more of the work.

Two simulated workers, one ten times as fast as the other (their step times),
the real broker, scheduler and kernel. No time is asserted: only who served more.
"""

from __future__ import annotations

from collections import Counter

import pytest
from stack import Stack

from workers.sim import LatencyProfile

pytestmark = pytest.mark.e2e

MODEL = "shared"
BURST = 44
MAX_TOKENS = 16
WARM_UP_TOKENS = 200  # long enough that the second arrives while the first runs


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    log_dir = tmp_path_factory.mktemp("speed")
    with Stack(log_dir, log_dir, num_workers=0) as stack:
        for worker_id, base_ms in (("fast", 2.0), ("slow", 20.0)):
            profile = log_dir / f"{worker_id}.json"
            LatencyProfile(base_ms=base_ms, per_seq_ms=0.0, source="test").save(str(profile))
            stack.start_sim_worker(
                MODEL, worker_id, "--profile", str(profile), "--max-num-seqs", "32", num_ready=0
            )
        stack.wait_ready(num_workers=2)
        yield stack


def test_a_burst_goes_mostly_to_the_faster_worker(stack: Stack) -> None:
    with stack.client() as client:
        # two at once on idle, unmeasured workers: one on each, and both are measured
        warm_ups = [
            client.submit(f"warm up {index}", model=MODEL, max_tokens=MAX_TOKENS) for index in range(2)
        ]
        assert {client.result(request_id).worker_id for request_id in warm_ups} == {"fast", "slow"}
        burst = [
            client.submit(f"burst {index}", model=MODEL, max_tokens=MAX_TOKENS) for index in range(BURST)
        ]
        served = Counter(client.result(request_id).worker_id for request_id in burst)
    assert sum(served.values()) == BURST
    # by load alone each would take half; weighted by speed (10:1) the fast one takes most
    assert served["fast"] > 2 * served["slow"], served
