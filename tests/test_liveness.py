"""Heartbeats go only to quiet peers (llmos.wire.liveness), and that leaves no peer
silent long enough to be counted dead."""

from __future__ import annotations

import random

from llmos.wire.constants import HEARTBEAT_LIVENESS, HEARTBEAT_QUIET_FRACTION
from llmos.wire.liveness import is_heartbeat_due

INTERVAL_S = 1.0


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
