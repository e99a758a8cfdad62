"""Real llmos processes on free local ports, for benchmarks and tests.

`ServiceStack` starts the kernel, scheduler and broker; a subclass starts the
workers: `SimStack` the simulated workers `llmos bench sched` measures,
`llmos_bench.engine_stack.ModelStack` one real worker, `tests/stack.py` tiny-model ones.

    with SimStack(log_dir, num_workers=4, max_num_seqs=8, profile=profile) as stack:
        stack.set_policy("mlfq")      # SetPolicy to the scheduler; the broker keeps running
        ... load against stack.broker_address ...
        stack.wait_drained()

Kernel, scheduler, broker and one or more `llmos worker --engine sim` processes,
each `python -m llmos <service>` on free loopback ports, logging to
`log_dir/<name>.log`. Every process is stopped on exit (SIGTERM, then SIGKILL).
A SimStack with `num_brokers` > 1 runs that many brokers, each with a scheduler of
its own, all sharing the kernel: each broker serves its share of the simulated
workers' processes, and a client picks one of `broker_addresses`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from llmos.client import Client
from llmos.errors import LlmosError
from llmos.processes import ProcessGroup, StackPorts, free_address
from llmos.security.client_keys import INSECURE_ENV, KEY_ENV, KEYS_DIR_ENV, SERVER_KEY_ENV
from llmos.security.service_keys import open_keyring
from llmos.wire import pb
from scheduler_svc.policy_cli import NoReply, ask_scheduler
from workers.sim import LatencyProfile

SIM_MODEL = "sim"
CLIENT_ENV = (INSECURE_ENV, KEYS_DIR_ENV, KEY_ENV, SERVER_KEY_ENV)  # what a stack sets for its clients
READY_TIMEOUT_S = 60.0
PROBE_INTERVAL_S = 0.2
FALLBACK_LOG_MARK = "falls back"  # the broker's log line when it decides without the scheduler


class StackError(Exception):
    """A process died or the stack did not become ready; the message holds log tails."""


@dataclass(frozen=True)
class Shard:
    """One broker and the scheduler it asks, on ports of their own, with a journal and an
    audit log of its own. A stack's first is on its `ports`, its processes named
    `broker` and `scheduler`; a further one's are `broker-1`, `scheduler-1`, ..."""

    index: int
    client_address: str
    worker_address: str
    scheduler_address: str

    @classmethod
    def on_free_ports(cls, index: int) -> Shard:
        return cls(index, free_address(), free_address(), free_address())

    def name(self, service: str) -> str:
        return f"{service}-{self.index}" if self.index else service


class ServiceStack:
    """Kernel, scheduler and broker, each `python -m llmos <service>` on free loopback
    ports; a subclass starts the workers (`start_workers`). Use as a context manager:
    every process is stopped on exit, also when the start fails."""

    ready_timeout_s = READY_TIMEOUT_S

    def __init__(
        self,
        log_dir: Path,
        num_workers: int,
        policy: str = "fcfs",
        env: dict[str, str] | None = None,
        is_secure: bool = False,
    ) -> None:
        """`is_secure`: CURVE on every socket, with a keyring of its own in log_dir/keys
        (as `llmos up` runs by default); else every process runs --insecure."""
        self.log_dir = log_dir
        self.num_workers = num_workers
        self.policy = policy
        self.ports = StackPorts()
        self.is_secure = is_secure
        self.saved_env: dict[str, str | None] = {}
        self.keys_dir = log_dir / "keys"
        security_env = (
            {INSECURE_ENV: "0", KEYS_DIR_ENV: str(self.keys_dir)} if is_secure else {INSECURE_ENV: "1"}
        )
        self.group = ProcessGroup(log_dir, {**security_env, **(env or {})})
        self.processes = self.group.processes
        ports = self.ports
        self.shards = [Shard(0, ports.client_address, ports.worker_address, ports.scheduler_address)]

    @property
    def broker_address(self) -> str:
        return self.ports.client_address

    @property
    def broker_addresses(self) -> list[str]:
        """Every broker's address for clients, the first one's first."""
        return [shard.client_address for shard in self.shards]

    @property
    def kernel_address(self) -> str:
        return self.ports.kernel_address

    @property
    def scheduler_address(self) -> str:
        return self.ports.scheduler_address

    # ------------------------------------------------------------ start and stop

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.is_secure:
            open_keyring(self.keys_dir)  # before any process: they would race to make it
        self.point_clients_here()
        self.start_services()
        self.start_workers()
        self.wait_ready()

    def start_services(self) -> None:
        self.start_kernel()
        self.start_scheduler()
        self.start_broker()

    def start_kernel(self, *args: str) -> None:
        self.start_process(
            "kernel",
            "kernel",
            "--kernel-bind",
            self.kernel_address,
            "--kernel-pub-bind",
            self.ports.pub_address,
            *args,
        )

    def start_scheduler(self, *args: str, shard: Shard | None = None) -> None:
        shard = shard or self.shards[0]
        self.start_process(
            shard.name("scheduler"),
            "scheduler",
            "--policy",
            self.policy,
            "--scheduler-bind",
            shard.scheduler_address,
            "--kernel-pub-address",
            self.ports.pub_address,
            *args,
        )

    def start_broker(self, *args: str, shard: Shard | None = None) -> None:
        shard = shard or self.shards[0]
        self.start_process(
            shard.name("broker"),
            "broker",
            "--client-bind",
            shard.client_address,
            "--worker-bind",
            shard.worker_address,
            "--scheduler-address",
            shard.scheduler_address,
            "--journal",
            str(self.journal_path_of(shard)),
            "--audit-log",
            str(self.audit_log_path_of(shard)),
            *args,
        )

    @property
    def audit_log_path(self) -> Path:
        return self.audit_log_path_of(self.shards[0])

    def audit_log_path_of(self, shard: Shard) -> Path:
        """`audit.jsonl`, a further shard's `audit-1.jsonl`, ..."""
        return self.log_dir / f"{shard.name('audit')}.jsonl"

    def client_keys(self, name: str = "admin") -> dict[str, Any]:
        """Keyword arguments for a Client of this stack: key `name` of its keyring, or plain TCP."""
        if not self.is_secure:
            return {"insecure": True}
        return {
            "key_file": self.keys_dir / f"{name}.key_secret",
            "server_key_file": self.keys_dir / "broker.key",
        }

    @property
    def journal_path(self) -> Path:
        """The broker's own journal (a later --journal in `start_broker`'s args wins)."""
        return self.journal_path_of(self.shards[0])

    def journal_path_of(self, shard: Shard) -> Path:
        """`broker-journal.sqlite3`, a further shard's `broker-1-journal.sqlite3`, ..."""
        return self.log_dir / f"{shard.name('broker')}-journal.sqlite3"

    def start_workers(self) -> None:
        raise NotImplementedError

    def worker_links(self, shard: Shard | None = None) -> tuple[str, ...]:
        """A worker's flags for reaching this broker (or the shard's) and the kernel."""
        worker_address = (shard or self.shards[0]).worker_address
        return ("--broker-worker-address", worker_address, "--kernel-address", self.kernel_address)

    def start_process(self, name: str, *args: str) -> None:
        self.group.start(name, *args)

    def point_clients_here(self) -> None:
        """Clients made while the stack runs (the SDK, the load drivers, here or in child
        processes) find its keys, as a user's find the keyring `llmos up` made; `stop`
        puts the environment back."""
        self.saved_env = {name: os.environ.get(name) for name in CLIENT_ENV}
        for name in (KEY_ENV, SERVER_KEY_ENV):
            os.environ.pop(name, None)
        os.environ[INSECURE_ENV] = "0" if self.is_secure else "1"
        if self.is_secure:
            os.environ[KEYS_DIR_ENV] = str(self.keys_dir)

    def stop(self) -> None:
        self.group.stop()
        for name, value in self.saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self.saved_env = {}

    # ------------------------------------------------------------ state

    def check_alive(self, ignore: tuple[str, ...] = ()) -> None:
        """StackError (with the log tails) once a process has exited, unless its name
        starts with `ignore`."""
        exited = self.group.first_exited(ignore)
        if exited is not None:
            raise StackError(f"{exited[0]} exited with status {exited[1]}\n{self.log_tails()}")

    def log_tails(self, num_chars: int = 2000) -> str:
        return self.group.log_tails(num_chars)

    def status(self, timeout_s: float = 5.0, address: str = "") -> pb.StatusReply:
        """The first broker's status, or that of the broker at `address`."""
        with Client(address or self.broker_address, timeout_s=timeout_s, **self.client_keys()) as client:
            return client.status()

    def wait_ready(self, num_workers: int = 0) -> None:
        """Until the broker counts `num_workers` (default: every one started)."""
        self.wait_workers(self.broker_address, num_workers or self.num_workers)

    def wait_workers(self, address: str, num_workers: int) -> None:
        """Until the broker at `address` counts `num_workers`."""
        timeout_s = self.ready_timeout_s
        deadline_s = time.monotonic() + timeout_s
        while time.monotonic() < deadline_s:
            self.check_alive()
            try:
                if len(self.status(timeout_s=1.0, address=address).workers) >= num_workers:
                    return
            except LlmosError:
                pass  # not up yet
            time.sleep(PROBE_INTERVAL_S)
        raise StackError(
            f"{num_workers} workers not ready at {address} within {timeout_s:g} s\n{self.log_tails()}"
        )


class SimStack(ServiceStack):
    def __init__(
        self,
        log_dir: Path,
        num_workers: int,
        max_num_seqs: int,
        profile: LatencyProfile,
        policy: str = "fcfs",
        tenant_weights: str = "",
        num_sim_processes: int = 1,
        is_secure: bool = False,
        broker_args: tuple[str, ...] = (),
        num_brokers: int = 1,
    ) -> None:
        """`num_brokers`: shards, each a broker and its scheduler, sharing the kernel; sim
        process i serves broker i % num_brokers, so there are at least as many processes."""
        assert num_workers >= num_sim_processes >= num_brokers >= 1
        super().__init__(log_dir, num_workers, policy, is_secure=is_secure)
        self.broker_args = broker_args
        self.max_num_seqs = max_num_seqs
        self.profile = profile
        self.tenant_weights = tenant_weights
        self.num_sim_processes = num_sim_processes
        self.shards += [Shard.on_free_ports(index) for index in range(1, num_brokers)]

    @property
    def num_slots(self) -> int:
        return self.num_workers * self.max_num_seqs

    def start_services(self) -> None:
        self.start_kernel()
        for shard in self.shards:
            self.start_scheduler("--tenant-weights", self.tenant_weights, shard=shard)
            self.start_broker("--tiers", "interactive,standard,batch", *self.broker_args, shard=shard)

    def wait_ready(self, num_workers: int = 0) -> None:
        """Until each broker counts the workers of its processes (`num_workers` is for one broker)."""
        if len(self.shards) == 1:
            super().wait_ready(num_workers)
            return
        for shard in self.shards:
            self.wait_workers(shard.client_address, self.workers_of(shard))

    def workers_of(self, shard: Shard) -> int:
        """The simulated workers serving the shard's broker."""
        return sum(self.workers_per_process()[shard.index :: len(self.shards)])

    def start_workers(self) -> None:
        profile_path = self.log_dir / "profile.json"
        self.profile.save(str(profile_path))
        for index, count in enumerate(self.workers_per_process()):
            self.start_process(
                f"sim-{index}",
                "worker",
                "--engine",
                "sim",
                "--sim-workers",
                str(count),
                "--worker-id",
                f"sim{index}",
                "--max-num-seqs",
                str(self.max_num_seqs),
                "--model-name",
                SIM_MODEL,
                "--profile",
                str(profile_path),
                *self.worker_links(self.shards[index % len(self.shards)]),
            )

    def workers_per_process(self) -> list[int]:
        base, extra = divmod(self.num_workers, self.num_sim_processes)
        return [base + (index < extra) for index in range(self.num_sim_processes)]

    # ------------------------------------------------------------ state

    def wait_drained(self, timeout_s: float = 60.0) -> bool:
        """Until no broker has a request queued or running (the last run's leftovers are gone)."""
        deadline_s = time.monotonic() + timeout_s
        while time.monotonic() < deadline_s:
            self.check_alive()
            if all(is_idle(self.status(address=address)) for address in self.broker_addresses):
                return True
            time.sleep(PROBE_INTERVAL_S)
        return False

    def set_policy(self, name: str) -> str:
        """Switch every scheduler's policy with SetPolicy (the brokers keep running); the
        policy they report. A switch to the policy in use keeps its state, so switching
        through another one gives `fair` fresh counters."""
        for shard in self.shards:
            try:
                reply = ask_scheduler(
                    shard.scheduler_address,
                    pb.SetPolicy(policy=name),
                    timeout_s=5.0,
                    keys_dir=self.keys_dir if self.is_secure else None,
                    is_insecure=not self.is_secure,
                )
            except NoReply as exc:
                raise StackError(f"{exc}\n{self.log_tails()}") from None
            if isinstance(reply, pb.Error):
                raise StackError(f"the scheduler refused policy {name!r}: {reply.message}")
        return reply.policy

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user + system) each live process has used so far; {} where
        /proc is not there to ask."""
        ticks_per_s = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        used: dict[str, float] = {}
        for name, process in self.processes.items():
            try:
                stat = Path(f"/proc/{process.pid}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
            used[name] = (int(fields[11]) + int(fields[12])) / ticks_per_s  # utime, stime
        return used

    def count_fallbacks(self) -> int:
        """Times the brokers have decided without their schedulers so far (from their logs)."""
        logs = [self.log_dir / f"{shard.name('broker')}.log" for shard in self.shards]
        return sum(log.read_text(errors="replace").count(FALLBACK_LOG_MARK) for log in logs if log.exists())


def is_idle(status: pb.StatusReply) -> bool:
    return status.num_running == 0 and all(tier.depth == 0 for tier in status.tiers)
