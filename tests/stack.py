"""Start real llmos processes through the CLI, as a user would, on free ports.

    with Stack(model_dir, tmp_path, num_workers=2) as stack:
        client = stack.client()
        ...

Every process is stopped on exit (SIGTERM, then SIGKILL), so a failed test
never leaves one behind; their logs are in the error when a start fails.
"""

from __future__ import annotations

import signal
from pathlib import Path

from llmos.client import Client
from llmos_bench.stack import ServiceStack

HEARTBEAT_INTERVAL_MS = 200  # fast failure detection for tests: dead after 600 ms
READY_TIMEOUT_S = 120


class Stack(ServiceStack):
    """The kernel, scheduler (unless `with_scheduler` is off) and broker, and
    `num_workers` tiny-model workers on the CPU."""

    ready_timeout_s = READY_TIMEOUT_S

    def __init__(
        self,
        model_dir: Path,
        log_dir: Path,
        num_workers: int = 1,
        policy: str = "priority",
        with_scheduler: bool = True,
        broker_args: tuple[str, ...] = (),
        worker_args: tuple[str, ...] = (),
        is_secure: bool = False,
    ) -> None:
        super().__init__(
            log_dir,
            num_workers,
            policy,
            env={"LLMOS_HEARTBEAT_INTERVAL_MS": str(HEARTBEAT_INTERVAL_MS)},
            is_secure=is_secure,
        )
        self.model_dir = model_dir
        self.with_scheduler = with_scheduler
        self.broker_args = broker_args
        self.worker_args = worker_args

    def start_services(self) -> None:
        self.start_kernel()
        if self.with_scheduler:
            self.start_scheduler()
        self.start_broker(*self.broker_args)

    def start_workers(self) -> None:
        for index in range(self.num_workers):
            self.start_worker(index)

    def start_sim_worker(
        self, model_name: str, worker_id: str = "sim", *args: str, num_ready: int = 1
    ) -> None:
        """One simulated worker (`llmos worker --engine sim`) serving `model_name`, with the
        worker flags `args`; it returns once the broker counts `num_ready` workers (0: at once)."""
        self.start_process(
            worker_id,
            "worker",
            "--engine",
            "sim",
            "--worker-id",
            worker_id,
            "--model-name",
            model_name,
            *self.worker_links(),
            *args,
        )
        if num_ready:
            self.wait_ready(num_workers=num_ready)

    def start_worker(self, index: int) -> None:
        self.start_process(
            f"worker-{index}",
            "worker",
            "--worker-id",
            f"worker-{index}",
            "--model",
            str(self.model_dir),
            "--threads",
            "1",
            "--device",
            "cpu",
            *self.worker_links(),
            *self.worker_args,
        )

    def client(self, timeout_s: float = 60.0) -> Client:
        return Client(self.broker_address, timeout_s=timeout_s, **self.client_keys())

    def check_alive(self, ignore: tuple[str, ...] = ("killed",)) -> None:
        super().check_alive(ignore)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes.pop(name)
        process.send_signal(sig)
        process.wait(timeout=30)
        self.processes[f"killed-{name}"] = process

    def logs(self) -> str:
        return self.log_tails(4000)
