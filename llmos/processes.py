"""llmos services as child processes that are always stopped (for tests and benchmarks).

    with ProcessGroup(log_dir) as group:
        group.start("kernel", "kernel", "--kernel-bind", free_address())

Each child is `python -m llmos <args>` in its own session, logging to
`log_dir/<name>.log` (a child started again under its name, as `llmos up`
restarts one, appends to it); on exit every live child gets SIGTERM, then
SIGKILL after a grace period, so a failed test or benchmark never leaves one behind.
A parent that cannot run its exit (SIGKILL, or SIGTERM without a handler) leaves
none either, on Linux: a child started from the main thread gets SIGTERM when
its parent dies (`PR_SET_PDEATHSIG`).
"""

from __future__ import annotations

import ctypes
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from llmos.wire.constants import tcp

log = logging.getLogger(__name__)

STOP_GRACE_S = 10.0
FREE_PORT_MIN = 20000  # free_port's lowest: clear of the well-known and registered services below
FREE_PORT_TRIES = 100
# the ports free_port handed out last, never handed out again while listed: a port is
# free until its service binds it, so two calls before that could return the same one
# (two services of one stack on one port: "Address already in use")
RECENT_PORTS_KEPT = 4096
_recent_ports: dict[int, None] = {}  # in the order handed out
_port_rng = random.Random()  # its own: a test that seeds `random` would repeat the ports
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def ephemeral_port_range() -> tuple[int, int]:
    """The ports the OS hands outgoing connections (Linux's default where it cannot be read)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A local port nothing listens on, chosen below the ephemeral range: a port the OS
    picked for us (bind to 0) comes from that range, where any process's outgoing
    connection may take it before the service we start binds it."""
    low = ephemeral_port_range()[0]
    for _ in range(FREE_PORT_TRIES):
        port = _port_rng.randrange(FREE_PORT_MIN, low) if low > FREE_PORT_MIN + 1000 else 0
        if port in _recent_ports:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = probe.getsockname()[1]
        if port in _recent_ports:  # the OS's pick (bind to 0)
            continue
        _recent_ports[port] = None
        if len(_recent_ports) > RECENT_PORTS_KEPT:
            del _recent_ports[next(iter(_recent_ports))]
        return port
    raise OSError(f"no free local port found in {FREE_PORT_TRIES} tries")


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


def die_with_parent() -> Callable[[], None] | None:
    """What a child runs between fork and exec so that it gets SIGTERM when this
    process dies, or None where that cannot be had. Linux sends it when the thread
    that forked the child ends, so only children of the main thread get it (its end
    is the process's); a child of another thread lives until it is stopped."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it
    parent_pid = os.getpid()

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:  # the parent died before the line above
            os._exit(1)

    return in_child


def llmos_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "llmos", *args]


class ProcessGroup:
    def __init__(self, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.log_dir = log_dir
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._log_files: dict[str, IO[bytes]] = {}

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
        """Start `argv` as child `name`; a child of that name that ran before must have exited."""
        old = self.processes.get(name)
        assert old is None or old.poll() is not None, f"{name} is still running"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        old_log_file = self._log_files.pop(name, None)
        if old_log_file is not None:
            old_log_file.close()
        # closed in stop(): a restart appends to the log of the run before
        log_file = open(self.log_path(name), "ab" if old_log_file is not None else "wb")
        self._log_files[name] = log_file
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
            preexec_fn=die_with_parent(),  # only prctl between fork and exec: no lock to wait on
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

    def stop(self, grace_s: float = STOP_GRACE_S, names: tuple[str, ...] | None = None) -> None:
        """SIGTERM the children (those in `names`, or all), wait up to grace_s in all,
        SIGKILL the rest; log files close once all are stopped."""
        alive = [
            process
            for name, process in self.processes.items()
            if process.poll() is None and (names is None or name in names)
        ]
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
        if names is not None:
            return
        for log_file in self._log_files.values():
            log_file.close()
        self._log_files.clear()
