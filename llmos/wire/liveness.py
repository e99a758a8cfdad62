"""When a heartbeat is due: one rule for the broker, the worker and the simulated workers.

Any frame is a sign of life (the zguide's Paranoid Pirate pattern), so a peer that
was sent anything else within HEARTBEAT_QUIET_FRACTION of an interval needs no
heartbeat. Sent every interval to each quiet peer, heartbeats then leave no peer
silent for more than about 1.5 intervals, half of the HEARTBEAT_LIVENESS allowance.
"""

from llmos.wire.constants import HEARTBEAT_QUIET_FRACTION


def is_heartbeat_due(sent_at_s: float, now_s: float, interval_s: float) -> bool:
    """The peer was sent nothing since `sent_at_s`: is that quiet enough for a heartbeat?"""
    return now_s - sent_at_s >= HEARTBEAT_QUIET_FRACTION * interval_s
