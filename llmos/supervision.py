"""`llmos up`'s supervisor: start children, restart the ones that die, stop them all.

As compose's `restart:` and Kubernetes do for the other deployments, a child that
exits while the stack runs is logged and started again with the same command,
after a backoff: FIRST_RESTART_DELAY_S, doubling with each exit in a row up to
MAX_RESTART_DELAY_S, and back to the first delay once it has run STABLE_RUN_S.
A worker that exits 0 drained and left on purpose (SIGTERM, `llmos drain`): it
stays gone. Stopping stops the workers first, so that they finish what they run
while the broker still relays it, then the rest.
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from llmos.processes import STOP_GRACE_S, ProcessGroup

log = logging.getLogger(__name__)

FIRST_RESTART_DELAY_S = 0.5
MAX_RESTART_DELAY_S = 30.0
STABLE_RUN_S = 60.0  # a child that ran this long before it exited starts the backoff afresh
LOG_TAIL_LINES = 20


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: list[str]
    is_worker: bool = False  # exit 0 means it drained and left: not restarted


@dataclass
class RestartBackoff:
    """How long a child waits to be started again after each exit (plain data)."""

    delay_s: float = FIRST_RESTART_DELAY_S  # the wait after its next exit

    def next_delay_s(self, ran_s: float) -> float:
        """The wait before restarting a child that ran `ran_s` before it exited."""
        if ran_s >= STABLE_RUN_S:
            self.delay_s = FIRST_RESTART_DELAY_S
        delay_s = self.delay_s
        self.delay_s = min(2 * self.delay_s, MAX_RESTART_DELAY_S)
        return delay_s


@dataclass
class Child:
    spec: ChildSpec
    started_at_s: float
    backoff: RestartBackoff = field(default_factory=RestartBackoff)
    restart_at_s: float | None = None  # set while it waits out its backoff
    has_left: bool = False  # a worker that drained: never started again


def describe_exit(status: int) -> str:
    """`status 3`, or `signal SIGKILL` for a child a signal ended (Popen's negative status)."""
    if status >= 0:
        return f"status {status}"
    try:
        return f"signal {signal.Signals(-status).name}"
    except ValueError:
        return f"signal {-status}"


class Supervisor:
    """Starts children with their output in per-process log files, restarts the ones
    that die, and stops them (the process mechanics are llmos.processes')."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.group = ProcessGroup(log_dir)
        self.processes = self.group.processes
        self.children: dict[str, Child] = {}
        self._reported: set[str] = set()

    def log_path(self, name: str) -> Path:
        return self.group.log_path(name)

    def start(self, spec: ChildSpec) -> None:
        self.group.start_argv(spec.name, spec.argv)
        self._reported.discard(spec.name)
        child = self.children.get(spec.name)
        if child is None:
            self.children[spec.name] = Child(spec, time.monotonic())
        else:
            child.started_at_s = time.monotonic()

    def newly_exited(self) -> list[tuple[str, int]]:
        """(name, exit status) of children that exited since the last call."""
        exited = []
        for name, process in self.processes.items():
            if name not in self._reported and process.poll() is not None:
                self._reported.add(name)
                exited.append((name, process.returncode))
        return exited

    def schedule_restarts(self, now_s: float) -> None:
        """Log each child that exited since the last call, and when it starts again."""
        for name, status in self.newly_exited():
            child = self.children[name]
            if child.spec.is_worker and status == 0:
                child.has_left = True
                log.info("%s exited with status 0 (drained); not restarting it", name)
                continue
            delay_s = child.backoff.next_delay_s(now_s - child.started_at_s)
            child.restart_at_s = now_s + delay_s
            log.error(
                "%s exited with %s; restarting it in %g s (its log: %s)",
                name,
                describe_exit(status),
                delay_s,
                self.log_path(name),
            )

    def restart_due(self, now_s: float) -> None:
        for name, child in self.children.items():
            if child.restart_at_s is not None and now_s >= child.restart_at_s:
                child.restart_at_s = None
                self.start(child.spec)
                log.warning("restarted %s (pid %d)", name, self.processes[name].pid)

    def num_alive(self) -> int:
        return sum(process.poll() is None for process in self.processes.values())

    def log_tail(self, name: str, num_lines: int = LOG_TAIL_LINES) -> str:
        try:
            lines = self.log_path(name).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-num_lines:])

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM the workers (they drain), then every other child; each round waits
        up to grace_s in all, then SIGKILLs what is left."""
        workers = tuple(name for name, child in self.children.items() if child.spec.is_worker)
        if workers:
            self.group.stop(grace_s, names=workers)
        self.group.stop(grace_s)
