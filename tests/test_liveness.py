"""Heartbeats go only to quiet peers (llmos.wire.liveness), and that leaves no peer
silent long enough to be counted dead; a real broker heartbeats each worker by the
interval the worker asked for."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from service_process import dealer, receive
from stack import Stack

from llmos.wire import pack, pb
from llmos.wire.constants import HEARTBEAT_LIVENESS, HEARTBEAT_QUIET_FRACTION
from llmos.wire.liveness import is_heartbeat_due

INTERVAL_S = 1.0
BROKER_INTERVAL_MS = 1500
QUICK_INTERVAL_MS = 250  # a worker's, well under the broker's


def test_a_heartbeat_is_due_once_the_peer_was_sent_nothing_for_part_of_an_interval():
    quiet_s = HEARTBEAT_QUIET_FRACTION * INTERVAL_S
    assert not is_heartbeat_due(sent_at_s=10.0, now_s=10.0, interval_s=INTERVAL_S)
    assert not is_heartbeat_due(sent_at_s=10.0, now_s=10.0 + quiet_s * 0.99, interval_s=INTERVAL_S)
    assert is_heartbeat_due(sent_at_s=10.0, now_s=10.0 + quiet_s, interval_s=INTERVAL_S)
    assert is_heartbeat_due(sent_at_s=0.0, now_s=10.0, interval_s=INTERVAL_S)  # never sent anything


def longest_silence_s(other_sends_s: list[float], end_s: float) -> float:
    """A sender that checks once an interval, as the broker and the workers do, and sends a
    heartbeat only when due, beside its other messages: the longest gap between two sends."""
    sends_s, sent_at_s = [0.0], 0.0
    others = iter(sorted(other_sends_s))
    next_other_s = next(others, None)
    check_s = INTERVAL_S
    while check_s < end_s:
        while next_other_s is not None and next_other_s <= check_s:
            sends_s.append(next_other_s)
            sent_at_s = next_other_s
            next_other_s = next(others, None)
        if is_heartbeat_due(sent_at_s, check_s, INTERVAL_S):
            sends_s.append(check_s)
            sent_at_s = check_s
        check_s += INTERVAL_S
    return max(later - earlier for earlier, later in zip(sends_s, sends_s[1:], strict=False))


def test_no_peer_goes_silent_for_as_long_as_liveness_allows():
    bound_s = (1 + HEARTBEAT_QUIET_FRACTION) * INTERVAL_S
    assert longest_silence_s([], end_s=50.0) <= INTERVAL_S  # idle: a heartbeat every interval
    generator = random.Random(7)
    for density in (0.2, 0.7, 2.0, 20.0):  # other messages an interval, on average
        sends_s = [generator.uniform(0, 50) for _ in range(int(50 * density))]
        silence_s = longest_silence_s(sends_s, end_s=50.0)
        assert silence_s <= bound_s + 1e-9, (density, silence_s)
    assert bound_s <= HEARTBEAT_LIVENESS * INTERVAL_S / 2  # half the allowance for slow loops


@pytest.mark.e2e
def test_a_worker_with_a_shorter_interval_than_the_brokers_hears_from_it_by_its_own(tmp_path: Path):
    """Before, the broker heartbeated every worker at its own interval: a worker that
    asked for a quarter of it thought the broker silent after 3 of its intervals,
    reconnected and lost what it ran. Over 10 of the worker's intervals it now hears
    about 10 heartbeats (by the broker's interval, 1 or 2)."""
    broker_args = ("--heartbeat-interval-ms", str(BROKER_INTERVAL_MS))
    stack = Stack(tmp_path, tmp_path, num_workers=0, with_scheduler=False, broker_args=broker_args)
    with stack, dealer(stack.ports.worker_address, "quick") as worker:
        registration = pb.WorkerRegister(
            worker_id="quick", models=["m"], max_num_seqs=1, heartbeat_interval_ms=QUICK_INTERVAL_MS
        )
        worker.send(pack(registration))
        counts = {"heartbeat": 0, "disconnect": 0}
        next_beat_s, end_s = 0.0, time.monotonic() + 10 * QUICK_INTERVAL_MS / 1000
        while (now_s := time.monotonic()) < end_s:
            if now_s >= next_beat_s:  # this worker's side: a heartbeat every interval of its own
                worker.send(pack(pb.Heartbeat(worker_id="quick")))
                next_beat_s = now_s + QUICK_INTERVAL_MS / 1000
            if worker.poll(10):
                name, _ = receive(worker, set(counts))
                counts[name] += 1
    assert counts["disconnect"] == 0, "the broker lost the worker"
    assert counts["heartbeat"] >= 5, counts
