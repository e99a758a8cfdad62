"""llmos services as child processes that are always stopped (for tests and benchmarks).

    with ProcessGroup(log_dir) as group:
        group.start("kernel", "kernel", "--kernel-bind", free_address())

Each child is `python -m llmos <args>` in its own session, logging to
`log_dir/<name>.log`; on exit every live child gets SIGTERM, then SIGKILL after
a grace period, so a failed test or benchmark never leaves one behind.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from llmos.wire.constants import tcp

log = logging.getLogger(__name__)

STOP_GRACE_S = 10.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def free_address() -> str:
    return tcp(free_port())


@dataclass(frozen=True)
class StackPorts:
    """tcp:// addresses on free local ports for one stack: the broker's for clients
    and for workers, the kernel's ROUTER and PUB, the scheduler's."""

    client_address: str = field(default_factory=free_address)
    worker_address: str = field(default_factory=free_address)
    kernel_address: str = field(default_factory=free_address)
    pub_address: str = field(default_factory=free_address)
    scheduler_address: str = field(default_factory=free_address)


def llmos_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "llmos", *args]


class ProcessGroup:
    def __init__(self, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.log_dir = log_dir
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._log_files: list[IO[bytes]] = []

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """`python -m llmos <args>` as child `name`."""
        return self.start_argv(name, llmos_command(*args))

    def start_argv(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_file = open(self.log_path(name), "wb")  # closed in stop()
        self._log_files.append(log_file)
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        self.processes[name] = process
        log.debug("started %s (pid %d): %s", name, process.pid, argv)
        return process

    def first_exited(self, ignore: tuple[str, ...] = ()) -> tuple[str, int] | None:
        """(name, exit status) of a child that ended, unless its name starts with `ignore`."""
        for name, process in self.processes.items():
            if process.poll() is not None and not name.startswith(ignore):
                return name, process.returncode
        return None

    def log_tails(self, num_chars: int = 4000) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-num_chars:]}"
            for path in sorted(self.log_dir.glob("*.log"))
        )

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        alive = [process for process in self.processes.values() if process.poll() is None]
        for process in alive:
            process.send_signal(signal.SIGTERM)
        deadline_s = time.monotonic() + grace_s
        for process in alive:
            try:
                process.wait(max(0.1, deadline_s - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("pid %d ignored SIGTERM for %.0f s; killing it", process.pid, grace_s)
                process.kill()
                process.wait()
        for log_file in self._log_files:
            log_file.close()
        self._log_files.clear()
