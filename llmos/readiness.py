"""What `llmos up` has seen come up, and the lines that say so.

Plain data in (a service answered, the broker's StatusReply), lines out; the launcher
probes and prints. Each service is reported ready once, in the order it was seen.
"""

from __future__ import annotations

from llmos.wire import pb

KERNEL = "kernel"
BROKER = "broker"
SCHEDULER = "scheduler"


class Readiness:
    def __init__(self, worker_ids: list[str]) -> None:
        self.worker_ids = worker_ids
        self.ready_names: list[str] = []  # in the order each came up
        self.num_workers_registered = 0

    def kernel_answered(self) -> list[str]:
        return self._mark(KERNEL, "kernel ready")

    def broker_answered(self, reply: pb.StatusReply) -> list[str]:
        """The lines for what this reply shows newly up: the broker, the scheduler it
        reaches, each worker registered with it."""
        lines = self._mark(BROKER, "broker ready")
        self.num_workers_registered = len(reply.workers)
        if reply.scheduler_online:
            policy = f" (policy {reply.scheduler_policy})" if reply.scheduler_policy else ""
            lines += self._mark(SCHEDULER, f"scheduler ready{policy}")
        for worker in sorted(reply.workers, key=lambda w: w.worker_id):
            models = ",".join(worker.models) or "no model"
            lines += self._mark(
                worker.worker_id, f"{worker.worker_id} ready ({models} on {worker.device or '?'})"
            )
        return lines

    @property
    def missing_worker_ids(self) -> list[str]:
        return [worker_id for worker_id in self.worker_ids if worker_id not in self.ready_names]

    @property
    def is_ready(self) -> bool:
        """The kernel answers and as many workers as were started registered with the
        broker (any worker counts, one from another host too; the scheduler is not waited
        for: the broker places requests itself until it connects)."""
        return (
            KERNEL in self.ready_names
            and BROKER in self.ready_names
            and self.num_workers_registered >= len(self.worker_ids)
        )

    @property
    def waiting_for(self) -> str:
        """What is not up yet, as `waiting for <this>` reads."""
        if KERNEL not in self.ready_names:
            return "kernel: to answer a ResourceQuery"
        if BROKER not in self.ready_names:
            return "broker: to answer a StatusRequest"
        missing = self.missing_worker_ids
        if not missing:
            return "nothing"
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        return f"{shown}: loading the model, then registering with the broker"

    def _mark(self, name: str, line: str) -> list[str]:
        if name in self.ready_names:
            return []
        self.ready_names.append(name)
        return [line]
