"""A worker's drain: finish what it runs, take nothing new, then leave.

SIGTERM (the first one) or the broker's Drain starts it; the worker tells the
broker with a Drain of its own, so that nothing more is dispatched to it. A
Dispatch that crossed that Drain on the wire is handed back with a final
PREEMPTED delta holding no token: the broker re-queues the request, and it runs
elsewhere as if it had never left the queue. The drain is over when nothing is
left to run, or when `drain_timeout_s` has passed: then the worker says
Disconnect to the broker (which re-queues what is left, resuming from the tokens
already streamed) and to the kernel, and exits 0.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Drain:
    reason: str
    deadline_s: float  # when the worker leaves even with requests still running

    def is_over(self, num_live_requests: int, now_s: float) -> bool:
        return num_live_requests == 0 or now_s >= self.deadline_s

    def goodbye(self, num_live_requests: int) -> str:
        """The Disconnect's reason once the drain is over (timed out, or cut short by a
        second signal, where requests are left)."""
        if num_live_requests == 0:
            return f"drained ({self.reason})"
        return f"left with {num_live_requests} requests unfinished ({self.reason})"
