"""The kills of `llmos bench chaos`: a seeded schedule, and a stack that can take them.

A schedule is a list of process names, one per kill: the broker at least twice,
the scheduler and the kernel once each, and random simulated workers for the
rest, in a seeded order. `ChaosStack` SIGKILLs a process by name and starts it
again with the same command line, so the broker comes back on the same ports
with the same journal and a worker under the same worker id.
"""

from __future__ import annotations

import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from llmos_bench.stack import SimStack
from workers.sim import LatencyProfile

BROKER = "broker"
SCHEDULER = "scheduler"
KERNEL = "kernel"
WORKER = "worker"  # the kind of every `sim-N` process
MIN_BROKER_KILLS = 2


def kind_of(name: str) -> str:
    """The kill kind a process name reports under: broker, scheduler, kernel or worker."""
    return WORKER if name.startswith("sim-") else name


def chaos_schedule(
    num_kills: int, num_workers: int, seed: int, num_broker_kills: int = MIN_BROKER_KILLS
) -> list[str]:
    """`num_kills` process names in a seeded order: `num_broker_kills` times the broker,
    the scheduler and the kernel once each (as far as `num_kills` goes), random workers
    for the rest."""
    rng = random.Random(seed)
    fixed = [BROKER] * num_broker_kills + [SCHEDULER, KERNEL]
    names = fixed[:num_kills]
    names += [f"sim-{rng.randrange(num_workers)}" for _ in range(num_kills - len(names))]
    rng.shuffle(names)
    return names


@dataclass
class Kill:
    """One kill as it happened (time.monotonic seconds)."""

    name: str
    killed_s: float
    restarted_s: float = float("nan")
    recovered_s: float = float("nan")  # the first answer to complete after the kill

    @property
    def kind(self) -> str:
        return kind_of(self.name)

    @property
    def recovery_s(self) -> float:
        return self.recovered_s - self.killed_s


class ChaosStack(SimStack):
    """A SimStack with one simulated worker per process (so a kill takes one worker),
    whose processes can be SIGKILLed and started again."""

    def __init__(self, log_dir: Path, num_workers: int, max_num_seqs: int, max_restarts: int) -> None:
        super().__init__(
            log_dir, num_workers, max_num_seqs, LatencyProfile(source="chaos"), num_sim_processes=num_workers
        )
        self.max_restarts = max_restarts

    def start_services(self) -> None:
        self.start_kernel()
        self.start_scheduler("--tenant-weights", self.tenant_weights)
        self.start_broker("--tiers", "interactive,standard,batch", "--max-restarts", str(self.max_restarts))

    def kill(self, name: str) -> float:
        """SIGKILL process `name` and reap it; when the signal went out (time.monotonic)."""
        process = self.processes[name]
        killed_s = time.monotonic()
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        return killed_s

    def restart(self, name: str) -> float:
        """Start process `name` again with its command line; when it was started."""
        argv = [str(arg) for arg in self.processes[name].args]  # type: ignore[union-attr]
        self.group.start_argv(name, argv)
        return time.monotonic()
