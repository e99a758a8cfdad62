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
    def __init__(self, worker_ids: list[str], brokers: list[str] | None = None) -> None:
        """`brokers`: their names (default one, "broker"); broker-1's scheduler is scheduler-1."""
        self.worker_ids = worker_ids
        self.brokers = brokers or [BROKER]
        self.ready_names: list[str] = []  # in the order each came up
        self.num_registered_by_broker: dict[str, int] = {}

    @property
    def num_workers_registered(self) -> int:
        return sum(self.num_registered_by_broker.values())

    def kernel_answered(self) -> list[str]:
        return self._mark(KERNEL, "kernel ready")

    def broker_answered(self, reply: pb.StatusReply, broker: str = BROKER) -> list[str]:
        """The lines for what this reply shows newly up: the broker, the scheduler it
        reaches, each worker registered with it."""
        lines = self._mark(broker, f"{broker} ready")
        self.num_registered_by_broker[broker] = len(reply.workers)
        if reply.scheduler_online:
            scheduler = broker.replace(BROKER, SCHEDULER, 1)
            policy = f" (policy {reply.scheduler_policy})" if reply.scheduler_policy else ""
            lines += self._mark(scheduler, f"{scheduler} ready{policy}")
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
            and all(broker in self.ready_names for broker in self.brokers)
            and self.num_workers_registered >= len(self.worker_ids)
        )

    @property
    def waiting_for(self) -> str:
        """What is not up yet, as `waiting for <this>` reads."""
        if KERNEL not in self.ready_names:
            return "kernel: to answer a ResourceQuery"
        for broker in self.brokers:
            if broker not in self.ready_names:
                return f"{broker}: to answer a StatusRequest"
        missing = self.missing_worker_ids
        if not missing:
            return "nothing"
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        brokers = "the broker" if len(self.brokers) == 1 else "their brokers"
        return f"{shown}: loading the model, then registering with {brokers}"

    def _mark(self, name: str, line: str) -> list[str]:
        if name in self.ready_names:
            return []
        self.ready_names.append(name)
        return [line]
