"""Start real llmos processes through the CLI, as a user would, on free ports.

    with Stack(model_dir, num_workers=2) as stack:
        client = stack.client()
        ...

Every process is stopped on exit (SIGTERM, then SIGKILL), so a failed test
never leaves one behind; their logs are printed when a start fails.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from llmos.client import Client
from llmos.processes import ProcessGroup, StackPorts

HEARTBEAT_INTERVAL_MS = 200  # fast failure detection for tests: dead after 600 ms
READY_TIMEOUT_S = 120


class Stack:
    def __init__(self, model_dir: Path, log_dir: Path, num_workers: int = 1, policy: str = "priority",
                 with_scheduler: bool = True, broker_args: tuple[str, ...] = (),
                 worker_args: tuple[str, ...] = ()) -> None:
        self.model_dir = model_dir
        self.log_dir = log_dir
        self.num_workers = num_workers
        self.policy = policy
        self.with_scheduler = with_scheduler
        self.broker_args = broker_args
        self.worker_args = worker_args
        self.ports = StackPorts()
        self.group = ProcessGroup(log_dir, env={
            "LLMOS_HEARTBEAT_INTERVAL_MS": str(HEARTBEAT_INTERVAL_MS)})
        self.processes = self.group.processes

    @property
    def broker_address(self) -> str:
        return self.ports.client_address

    @property
    def kernel_address(self) -> str:
        return self.ports.kernel_address

    def start_process(self, name: str, *args: str) -> None:
        self.group.start(name, *args)

    def start_kernel(self) -> None:
        self.start_process("kernel", "kernel", "--kernel-bind", self.kernel_address,
                           "--kernel-pub-bind", self.ports.pub_address)

    def start_scheduler(self) -> None:
        self.start_process("scheduler", "scheduler", "--policy", self.policy,
                           "--scheduler-bind", self.ports.scheduler_address,
                           "--kernel-pub-address", self.ports.pub_address)

    def start_broker(self) -> None:
        self.start_process("broker", "broker", "--client-bind", self.broker_address,
                           "--worker-bind", self.ports.worker_address,
                           "--scheduler-address", self.ports.scheduler_address,
                           *self.broker_args)

    def start_worker(self, index: int) -> None:
        self.start_process(f"worker-{index}", "worker", "--worker-id", f"worker-{index}",
                           "--model", str(self.model_dir), "--threads", "1", "--device", "cpu",
                           "--broker-worker-address", self.ports.worker_address,
                           "--kernel-address", self.kernel_address, *self.worker_args)

    def __enter__(self) -> "Stack":
        try:
            self.start_kernel()
            if self.with_scheduler:
                self.start_scheduler()
            self.start_broker()
            for index in range(self.num_workers):
                self.start_worker(index)
            self.wait_ready(self.num_workers)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def client(self, timeout_s: float = 60.0) -> Client:
        return Client(self.broker_address, timeout_s=timeout_s)

    def wait_ready(self, num_workers: int) -> None:
        deadline_s = time.monotonic() + READY_TIMEOUT_S
        with self.client(timeout_s=1.0) as client:
            while time.monotonic() < deadline_s:
                self.check_alive()
                try:
                    if len(client.status().workers) >= num_workers:
                        return
                except Exception:  # not up yet; the loop retries until the deadline
                    time.sleep(0.2)
                    continue
                time.sleep(0.2)
        raise RuntimeError(f"stack not ready in {READY_TIMEOUT_S} s\n{self.logs()}")

    def check_alive(self) -> None:
        exited = self.group.first_exited(ignore=("killed",))
        if exited is not None:
            raise RuntimeError(f"{exited[0]} exited with {exited[1]}\n{self.logs()}")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes.pop(name)
        process.send_signal(sig)
        process.wait(timeout=30)
        self.processes[f"killed-{name}"] = process

    def logs(self) -> str:
        return self.group.log_tails()

    def stop(self) -> None:
        self.group.stop()
