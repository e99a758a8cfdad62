"""`llmos up`: the process plan, the supervisor's start, restart and stop, and
readiness failing on a child that exits; end to end, a stack that comes up,
restarts a killed worker, and stops."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from service_process import free_up_base_port

from llmos.client import Client
from llmos.launcher import (
    ChildSpec,
    LaunchError,
    Supervisor,
    UpConfig,
    audit_log_path,
    broker_journal_path,
    check_brokers,
    plan_children,
    wait_until_ready,
)
from llmos.processes import free_port
from llmos.readiness import Readiness
from llmos.supervision import RestartBackoff
from llmos.wire import pb

PYTHON = sys.executable
IGNORES_SIGTERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
    "print('ready', flush=True); time.sleep(60)"
)


def python_child(name: str, code: str) -> ChildSpec:
    return ChildSpec(name, [PYTHON, "-c", code])


def wait_for_log_line(supervisor: Supervisor, name: str, line: str) -> None:
    for _ in range(600):
        if line in supervisor.log_tail(name).splitlines():
            return
        time.sleep(0.05)
    raise AssertionError(f"{name} never logged {line!r}")


@pytest.fixture
def supervisor(tmp_path):
    supervisor = Supervisor(tmp_path)
    try:
        yield supervisor
    finally:
        supervisor.stop(grace_s=1.0)


def test_plan_starts_every_service_with_the_shared_flags():
    config = UpConfig(workers=2, base_port=6000, policy="fair", device="cpu", threads=2, keys_dir="/keys")
    plan = {child.name: child.argv for child in plan_children(config, "/models/tiny")}

    assert list(plan) == ["kernel", "scheduler", "broker", "worker-0", "worker-1"]
    assert all(argv[:3] == [PYTHON, "-m", "llmos"] for argv in plan.values())
    assert plan["kernel"][3:] == [
        "kernel",
        "--kernel-bind",
        "tcp://127.0.0.1:6002",
        "--kernel-pub-bind",
        "tcp://127.0.0.1:6003",
        "--metrics-port",
        "6010",
        "--metrics-host",
        "127.0.0.1",
        "--keys-dir",
        "/keys",
    ]
    assert plan["scheduler"][3:] == [
        "scheduler",
        "--scheduler-bind",
        "tcp://127.0.0.1:6004",
        "--kernel-pub-address",
        "tcp://127.0.0.1:6003",
        "--policy",
        "fair",
        "--metrics-port",
        "6011",
        "--metrics-host",
        "127.0.0.1",
        "--keys-dir",
        "/keys",
    ]
    assert plan["broker"][3:] == [
        "broker",
        "--client-bind",
        "tcp://127.0.0.1:6000",
        "--worker-bind",
        "tcp://127.0.0.1:6001",
        "--scheduler-address",
        "tcp://127.0.0.1:6004",
        "--journal",
        str(broker_journal_path(6000)),
        "--audit-log",
        str(audit_log_path(6000)),
        "--metrics-port",
        "6012",
        "--metrics-host",
        "127.0.0.1",
        "--keys-dir",
        "/keys",
    ]
    assert plan["worker-1"][3:] == [
        "worker",
        "--broker-worker-address",
        "tcp://127.0.0.1:6001",
        "--kernel-address",
        "tcp://127.0.0.1:6002",
        "--model",
        "/models/tiny",
        "--device",
        "cpu",
        "--threads",
        "2",
        "--worker-id",
        "worker-1",
        "--metrics-port",
        "6014",
        "--metrics-host",
        "127.0.0.1",
        "--keys-dir",
        "/keys",
    ]


def test_a_plan_of_two_brokers_gives_each_its_own_ports_scheduler_journal_and_workers():
    config = UpConfig(workers=3, brokers=2, base_port=6000, insecure=True, gateway_port=8000)
    plan = {child.name: child.argv for child in plan_children(config, "/models/tiny")}

    assert list(plan) == [
        "kernel",
        "scheduler",
        "broker",
        "scheduler-1",
        "broker-1",
        "worker-0",
        "worker-1",
        "worker-2",
        "gateway",
    ]
    assert plan["scheduler-1"][3:9] == [
        "scheduler",
        "--scheduler-bind",
        "tcp://127.0.0.1:6104",
        "--kernel-pub-address",
        "tcp://127.0.0.1:6003",  # the one kernel's
        "--policy",
    ]
    assert plan["broker-1"][3:13] == [
        "broker",
        "--client-bind",
        "tcp://127.0.0.1:6100",
        "--worker-bind",
        "tcp://127.0.0.1:6101",
        "--scheduler-address",
        "tcp://127.0.0.1:6104",
        "--journal",
        str(broker_journal_path(6100)),
        "--audit-log",
    ]
    worker_brokers = [
        plan[f"worker-{i}"][plan[f"worker-{i}"].index("--broker-worker-address") + 1] for i in range(3)
    ]
    assert worker_brokers == ["tcp://127.0.0.1:6001", "tcp://127.0.0.1:6101", "tcp://127.0.0.1:6001"]
    assert all("tcp://127.0.0.1:6002" in plan[f"worker-{i}"] for i in range(3))  # one kernel
    gateway = plan["gateway"]
    assert gateway[gateway.index("--broker-address") + 1] == "tcp://127.0.0.1:6000,tcp://127.0.0.1:6100"
    # /metrics: the one-broker layout first, then each further scheduler and broker
    metrics = {
        name: int(argv[argv.index("--metrics-port") + 1]) for name, argv in plan.items() if name != "gateway"
    }
    assert metrics == {
        "kernel": 6010,
        "scheduler": 6011,
        "broker": 6012,
        "worker-0": 6013,
        "worker-1": 6014,
        "worker-2": 6015,
        "scheduler-1": 6016,
        "broker-1": 6017,
    }


@pytest.mark.parametrize(
    ("brokers", "workers", "message"),
    [(0, 1, "at least 1"), (2, 90, "broker-1's port 6100 is a /metrics port")],
)
def test_brokers_below_one_or_on_the_metrics_ports_are_a_usage_error(brokers, workers, message):
    with pytest.raises(click.UsageError, match=message):
        check_brokers(UpConfig(workers=workers, brokers=brokers, base_port=6000))


def test_an_insecure_plan_says_so_to_every_child():
    plan = plan_children(UpConfig(workers=1, insecure=True), "m")
    assert [child.argv[-1] for child in plan] == ["--insecure"] * 4


def test_binding_all_interfaces_still_connects_over_loopback():
    plan = plan_children(UpConfig(host="0.0.0.0", workers=0, insecure=True), "m")
    broker = next(child.argv for child in plan if child.name == "broker")
    assert broker[4:] == [
        "--client-bind",
        "tcp://0.0.0.0:5555",
        "--worker-bind",
        "tcp://0.0.0.0:5556",
        "--scheduler-address",
        "tcp://127.0.0.1:5559",
        "--journal",
        str(broker_journal_path(5555)),
        "--audit-log",
        str(audit_log_path(5555)),
        "--metrics-port",
        "5567",
        "--metrics-host",
        "0.0.0.0",
        "--insecure",
    ]


def test_stop_kills_a_child_that_ignores_sigterm_and_terminates_the_rest(supervisor):
    supervisor.start(python_child("stubborn", IGNORES_SIGTERM))
    supervisor.start(python_child("polite", "import time; time.sleep(60)"))
    wait_for_log_line(supervisor, "stubborn", "ready")  # its SIGTERM handler is in place
    assert supervisor.num_alive() == 2

    supervisor.stop(grace_s=1.0)

    assert supervisor.num_alive() == 0
    assert supervisor.processes["stubborn"].returncode == -9
    assert supervisor.processes["polite"].returncode == -15


def test_each_exit_is_reported_once_with_its_status(supervisor):
    supervisor.start(python_child("quitter", "raise SystemExit(5)"))
    supervisor.processes["quitter"].wait()
    assert supervisor.newly_exited() == [("quitter", 5)]
    assert supervisor.newly_exited() == []


def test_restart_delays_double_up_to_30_s_and_start_afresh_after_a_long_run():
    backoff = RestartBackoff()
    delays_s = [backoff.next_delay_s(ran_s=1.0) for _ in range(8)]
    assert delays_s == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff.next_delay_s(ran_s=60.0) == 0.5
    assert backoff.next_delay_s(ran_s=1.0) == 1.0


def test_a_child_that_dies_is_restarted_after_its_backoff_but_a_drained_worker_is_not(
    supervisor, tmp_path, caplog
):
    supervisor.start(python_child("crasher", "print('ran', flush=True); raise SystemExit(5)"))
    supervisor.start(ChildSpec("worker-0", [PYTHON, "-c", "pass"], is_worker=True))
    first_run = supervisor.processes["crasher"]
    for process in list(supervisor.processes.values()):
        process.wait()
    caplog.set_level("INFO", logger="llmos.supervision")

    exited_at_s = time.monotonic()
    supervisor.schedule_restarts(exited_at_s)
    supervisor.restart_due(exited_at_s + 0.4)
    assert supervisor.processes["crasher"] is first_run  # still waiting out its 0.5 s
    supervisor.restart_due(exited_at_s + 0.5)
    supervisor.processes["crasher"].wait()
    supervisor.restart_due(exited_at_s + 100.0)  # nothing more: its next exit is not seen yet

    assert supervisor.processes["crasher"] is not first_run
    assert supervisor.log_tail("crasher").splitlines() == ["ran", "ran"]  # the restart appends
    assert supervisor.children["worker-0"].has_left
    messages = sorted(record.getMessage() for record in caplog.records)
    assert messages == [
        f"crasher exited with status 5; restarting it in 0.5 s (its log: {tmp_path / 'crasher.log'})",
        f"restarted crasher (pid {supervisor.processes['crasher'].pid})",
        "worker-0 exited with status 0 (drained); not restarting it",
    ]


def test_readiness_fails_with_the_log_tail_when_a_child_exits(supervisor, tmp_path):
    supervisor.start(python_child("kernel", "print('port already in use'); raise SystemExit(3)"))
    supervisor.processes["kernel"].wait()
    with pytest.raises(LaunchError) as caught:
        wait_until_ready(supervisor, "tcp://127.0.0.1:3", ["tcp://127.0.0.1:1"], 1, timeout_s=30)
    message = str(caught.value)
    assert message.startswith("kernel exited with status 3 before llmos was ready")
    assert str(tmp_path / "kernel.log") in message
    assert message.endswith("port already in use")


def broker_reply(*worker_ids: str, scheduler_online: bool = False) -> pb.StatusReply:
    return pb.StatusReply(
        scheduler_online=scheduler_online,
        scheduler_policy="priority",
        workers=[pb.WorkerStatus(worker_id=w, models=["tiny"], device="cpu") for w in worker_ids],
    )


def test_readiness_says_each_service_once_as_it_comes_up_and_what_it_still_awaits():
    readiness = Readiness(["worker-0", "worker-1"])
    assert readiness.waiting_for == "kernel: to answer a ResourceQuery"

    assert readiness.kernel_answered() == ["kernel ready"]
    assert readiness.kernel_answered() == []
    assert readiness.waiting_for == "broker: to answer a StatusRequest"
    assert readiness.broker_answered(broker_reply()) == ["broker ready"]
    assert readiness.waiting_for == "worker-0, worker-1: loading the model, then registering with the broker"
    assert readiness.broker_answered(broker_reply("worker-1", scheduler_online=True)) == [
        "scheduler ready (policy priority)",
        "worker-1 ready (tiny on cpu)",
    ]
    assert not readiness.is_ready
    assert readiness.waiting_for.startswith("worker-0: loading the model")
    assert readiness.broker_answered(broker_reply("worker-0", "worker-1", scheduler_online=True)) == [
        "worker-0 ready (tiny on cpu)"
    ]
    assert readiness.is_ready


def test_readiness_of_two_brokers_waits_for_both_and_their_workers_together():
    readiness = Readiness(["worker-0", "worker-1"], ["broker", "broker-1"])
    readiness.kernel_answered()

    assert readiness.broker_answered(broker_reply("worker-0"), "broker") == [
        "broker ready",
        "worker-0 ready (tiny on cpu)",
    ]
    assert readiness.waiting_for == "broker-1: to answer a StatusRequest"
    assert readiness.broker_answered(broker_reply(scheduler_online=True), "broker-1") == [
        "broker-1 ready",
        "scheduler-1 ready (policy priority)",
    ]
    assert readiness.waiting_for.startswith(
        "worker-1: loading the model, then registering with their brokers"
    )
    assert readiness.broker_answered(broker_reply("worker-0"), "broker") == []  # counted once a broker
    assert not readiness.is_ready
    assert readiness.broker_answered(broker_reply("worker-1"), "broker-1") == ["worker-1 ready (tiny on cpu)"]
    assert readiness.is_ready


def test_readiness_shortens_a_long_list_of_workers_still_loading():
    readiness = Readiness([f"worker-{index}" for index in range(5)])
    readiness.kernel_answered()
    readiness.broker_answered(broker_reply())

    assert readiness.waiting_for.startswith("worker-0, worker-1, worker-2 and 2 more: ")


def test_free_ports_are_never_handed_out_twice_before_their_services_bind_them():
    """A stack takes five ports before any of its services binds one: each must differ,
    even where a test seeded `random` (free_port keeps its own generator)."""
    state = random.getstate()
    try:
        random.seed(0)
        first = [free_port() for _ in range(200)]
        random.seed(0)
        second = [free_port() for _ in range(200)]
    finally:
        random.setstate(state)
    assert len(set(first + second)) == 400


# ---------------------------------------------------------------- end to end


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


@pytest.mark.e2e
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds child processes through /proc")
def test_up_starts_the_services_answers_status_and_stops_them_on_sigterm(tmp_path):
    for module in ("kernel_svc.service", "scheduler_svc.service", "broker.service"):
        pytest.importorskip(module)
    base_port = free_up_base_port(num_workers=0)
    log_dir = tmp_path / "logs"
    kernel_bind = f"tcp://127.0.0.1:{base_port + 2}"
    with (tmp_path / "up.err").open("w") as up_stderr:
        up = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "llmos",
                "up",
                "--workers",
                "0",
                "--model",
                "unused",
                "--base-port",
                str(base_port),
                "--log-dir",
                str(log_dir),
                "--ready-timeout-s",
                "60",
            ],
            stdout=subprocess.PIPE,
            stderr=up_stderr,
            text=True,
        )
    try:
        lines = [up.stdout.readline(), up.stdout.readline()]
        assert lines == [
            f"llmos logs: {log_dir}\n",
            f"llmos is up: clients connect to tcp://127.0.0.1:{base_port} "
            f"(0 workers, model unused); Ctrl-C stops it\n",
        ], f"see {tmp_path}"
        assert processes_mentioning(kernel_bind)
        status = subprocess.run(
            [
                PYTHON,
                "-m",
                "llmos",
                "status",
                "--broker-address",
                f"tcp://127.0.0.1:{base_port}",
                "--kernel-address",
                f"tcp://127.0.0.1:{base_port + 2}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stdout
        assert "0 workers registered" in status.stdout
    finally:
        up.send_signal(signal.SIGTERM)
        returncode = up.wait(60)
        up.stdout.close()
    assert returncode == 0
    assert sorted(path.name for path in log_dir.iterdir()) == ["broker.log", "kernel.log", "scheduler.log"]
    assert processes_mentioning(kernel_bind) == []


def pids_of(*texts: str) -> list[int]:
    """Processes whose command line holds every one of `texts` (arguments NUL-separated)."""
    return [pid for pid in processes_mentioning(texts[0]) if all(t in cmdline_of(pid) for t in texts)]


def cmdline_of(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def wait_for(condition, what: str, attempts: int = 1200) -> None:
    for _ in range(attempts):
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting until {what}")


@dataclass
class UpRun:
    """`llmos up` on the tiny model, run by `running_up`: its process, its stderr's file,
    and once stopped (SIGTERM) its exit status."""

    process: subprocess.Popen
    log_path: Path
    returncode: int | None = None

    @property
    def log(self) -> str:
        return self.log_path.read_text()


@contextlib.contextmanager
def running_up(tiny_model_dir: Path, tmp_path: Path, base_port: int, *flags: str) -> Iterator[UpRun]:
    """Start `llmos up` on the tiny model (CPU, one thread a worker) with `flags`, read
    its first line; SIGTERM it on the way out."""
    log_path = tmp_path / "up.err"
    argv = [PYTHON, "-m", "llmos", "up", "--model", str(tiny_model_dir), "--device", "cpu"]
    argv += ["--threads", "1", "--base-port", str(base_port), "--log-dir", str(tmp_path / "logs"), *flags]
    with log_path.open("w") as up_stderr:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=up_stderr, text=True)
    run = UpRun(process, log_path)
    try:
        process.stdout.readline()  # where the logs are
        yield run
    finally:
        process.send_signal(signal.SIGTERM)
        run.returncode = process.wait(60)
        process.stdout.close()


@pytest.mark.e2e
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds child processes through /proc")
def test_up_restarts_a_killed_worker_and_leaves_a_drained_one_gone(tiny_model_dir, tmp_path):
    base_port = free_up_base_port(num_workers=1)
    with running_up(tiny_model_dir, tmp_path, base_port, "--workers", "1") as up:
        assert up.process.stdout.readline().startswith("llmos is up"), up.log
        worker_flags = ("--worker-id\0worker-0\0", f"127.0.0.1:{base_port + 1}")
        [killed_pid] = pids_of(*worker_flags)
        os.kill(killed_pid, signal.SIGKILL)

        wait_for(lambda: "restarted worker-0" in up.log, "llmos up restarts worker-0")
        [restarted_pid] = pids_of(*worker_flags)
        with Client(f"tcp://127.0.0.1:{base_port}", timeout_s=60) as client:
            result = client.generate("Once upon a time", max_tokens=4)
            drained = client.drain_worker("worker-0")
            wait_for(lambda: not client.status().workers, "the drained worker leaves the broker")
        wait_for(lambda: "(drained)" in up.log, "llmos up sees worker-0 exit")

    log = up.log
    assert up.returncode == 0, log
    assert restarted_pid != killed_pid
    assert "worker-0 exited with signal SIGKILL; restarting it in 0.5 s" in log
    assert (result.usage.generated_tokens, result.worker_id) == (4, "worker-0")
    assert (drained.worker_id, drained.num_running) == ("worker-0", 0)
    assert "worker-0 exited with status 0 (drained); not restarting it" in log
    assert log.count("restarted worker-0") == 1


@pytest.mark.e2e
def test_up_with_two_brokers_serves_on_both_each_with_its_share_of_the_workers(tiny_model_dir, tmp_path):
    base_port = free_up_base_port(num_workers=2, num_brokers=2)
    addresses = [f"tcp://127.0.0.1:{base_port}", f"tcp://127.0.0.1:{base_port + 100}"]
    flags = ("--workers", "2", "--brokers", "2", "--insecure")
    with running_up(tiny_model_dir, tmp_path, base_port, *flags) as up:
        assert up.process.stdout.readline() == (
            f"llmos is up: clients connect to {', '.join(addresses)} "
            f"(2 workers, 2 brokers, model {tiny_model_dir}); Ctrl-C stops it\n"
        ), up.log
        answers = {}
        for address in addresses:
            with Client(address, timeout_s=60) as client:
                answers[address] = (client.status(), client.generate("Once upon a time", max_tokens=3))

    assert up.returncode == 0, up.log
    for address, worker_id in zip(addresses, ["worker-0", "worker-1"], strict=True):
        status, result = answers[address]
        assert [worker.worker_id for worker in status.workers] == [worker_id]
        assert (result.worker_id, result.usage.generated_tokens) == (worker_id, 3)
    assert "broker-1 ready" in up.log and "worker-1 ready" in up.log
    assert sorted(path.name for path in (tmp_path / "logs").iterdir()) == [
        "broker-1.log",
        "broker.log",
        "kernel.log",
        "scheduler-1.log",
        "scheduler.log",
        "worker-0.log",
        "worker-1.log",
    ]
