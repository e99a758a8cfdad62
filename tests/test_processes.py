"""Children of llmos.processes never outlive their parent: a parent killed outright
(SIGKILL runs no `finally`) takes them with it, and a benchmark stopped with SIGTERM
stops its stack on the way out as Ctrl-C does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from service_process import wait_until

PYTHON = sys.executable
WAIT_S = 60.0

# a parent that starts one sleeping child from its main thread, says its pid, and waits
PARENT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from llmos.processes import ProcessGroup

    group = ProcessGroup(Path(sys.argv[1]))
    child = group.start_argv("sleeper", [sys.executable, "-c", "import time; time.sleep(120)"])
    print(child.pid, flush=True)
    time.sleep(120)
    """
)


def is_running(pid: int) -> bool:
    """Alive and not a zombie (a child whose parent died waits for init to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def children_of(parent_pid: int) -> list[int]:
    """The running processes whose parent is `parent_pid`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent_pid and is_running(int(entry.name)):
            pids.append(int(entry.name))
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_gets_sigterm_when_its_parent_is_killed_outright(tmp_path) -> None:
    parent = subprocess.Popen([PYTHON, "-c", PARENT, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    try:
        assert is_running(child_pid)
        parent.kill()
        parent.wait()
        wait_until(lambda: not is_running(child_pid), f"child {child_pid} ends with its parent", WAIT_S)
    finally:
        if is_running(child_pid):
            os.kill(child_pid, signal.SIGKILL)


@pytest.mark.e2e
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_benchmark_stopped_with_sigterm_stops_every_process_it_started(tmp_path) -> None:
    log_dir = tmp_path / "wire-logs"
    bench = subprocess.Popen(
        [PYTHON, "-m", "llmos", "bench", "wire", "--requests", "1000000", "--warmup", "0"]
        + ["--rounds", "1", "--insecure", "--json-only", "--log-dir", str(log_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    started: list[int] = []
    try:
        # kernel, scheduler, broker and the simulated worker
        wait_until(lambda: len(children_of(bench.pid)) >= 4, "the benchmark's stack is up", WAIT_S)
        started = children_of(bench.pid)
        bench.send_signal(signal.SIGTERM)
        _, stderr = bench.communicate(timeout=WAIT_S)
        assert bench.returncode == 1, stderr  # click's "Aborted!": it stopped as on Ctrl-C
        assert "Aborted" in stderr
        wait_until(lambda: not any(is_running(pid) for pid in started), "the stack stopped", WAIT_S)
    finally:
        if bench.poll() is None:
            bench.kill()
        for pid in started:
            if is_running(pid):
                os.kill(pid, signal.SIGKILL)
