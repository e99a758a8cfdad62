"""`llmos up`: run the whole stack on this machine as separate OS processes.

    kernel, scheduler, broker, worker-0 .. worker-N-1 [, scheduler-1, broker-1, ...]
        each `python -m llmos <service> <flags>`, logging to <log dir>/<name>.log

With `--brokers M` (more cores' worth of requests a second) broker i > 0 and its own
scheduler, journal and audit log take the ports of base port + i * BROKER_PORT_STRIDE,
all on the one kernel; worker j serves broker j mod M.

It waits until the kernel answers a ResourceQuery and the brokers report all N
workers registered, prints where clients connect, then supervises
(`llmos.supervision`): a child that dies later is logged and restarted after a
backoff; a worker that drained (exit 0) is not. Ctrl-C or SIGTERM stops every
child, the workers first (SIGTERM, then SIGKILL after STOP_GRACE_S), restarts
nothing, and exits 0.

Children run in their own session so a terminal's Ctrl-C reaches only this
process, which then stops them in order; the price is that a `kill -9` of the
launcher leaves them running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click

from llmos.cli import missing_extra, plural
from llmos.client import Client, query_kernel
from llmos.config import INSECURE_HELP, llmos_home, option, options_from
from llmos.errors import LlmosError
from llmos.logs import setup_logging
from llmos.progress import Waiting
from llmos.readiness import BROKER, KERNEL, Readiness
from llmos.security.client_keys import INSECURE_ENV, KEYS_DIR_ENV
from llmos.security.keyring import default_keys_dir
from llmos.security.service_keys import open_keyring
from llmos.signals import interrupt_on_sigterm
from llmos.supervision import ChildSpec, Supervisor
from llmos.wire.constants import CLIENT_PORT, DEFAULT_HOST, tcp

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 1.0  # one readiness query
PROBE_INTERVAL_S = 0.25  # between readiness rounds
WATCH_INTERVAL_S = 0.25  # between checks for dead children once up: well under the first backoff


# /metrics ports start this far above --base-port unless --metrics-base-port says where
METRICS_PORT_OFFSET = 10
# broker i > 0 (`--brokers`) takes the client, worker and scheduler ports of base port + i * this
BROKER_PORT_STRIDE = 100


@dataclass
class UpConfig:
    workers: int = option(1, "worker processes to start")
    brokers: int = option(
        1,
        "brokers, each with its own scheduler, journal and audit log, on one kernel; broker i > 0 "
        f"on the ports of base port + {BROKER_PORT_STRIDE} * i; worker j serves broker j mod brokers",
    )
    model: str = option("", "model directory for every worker (empty: the embedded tiny model)")
    host: str = option(DEFAULT_HOST, "interface every service binds and clients connect to")
    base_port: int = option(CLIENT_PORT, "client port; workers +1, kernel +2, kernel pub +3, scheduler +4")
    policy: str = option("priority", "scheduler placement policy")
    device: str = option("auto", "worker device: auto, cpu, cuda, cuda:N")
    threads: int = option(0, "CPU threads per worker (0: the library default)")
    log_dir: str = option("", "one log file per process here (empty: $LLMOS_HOME/logs)")
    demo: str = option("", "once up, submit this prompt and print the streamed answer")
    ready_timeout_s: float = option(120.0, "give up unless everything is ready this soon")
    metrics_base_port: int = option(
        0,
        "/metrics, /health, /ready: kernel on this port, then scheduler, broker, workers, each further "
        "scheduler and broker (0: base port + 10)",
    )
    insecure: bool = option(False, INSECURE_HELP)
    keys_dir: str = option(
        "", "keyring every service and the CLI use, made on first use (empty: $LLMOS_HOME/keys)"
    )
    gateway_port: int = option(
        0,
        "also run `llmos gateway` (OpenAI-compatible HTTP) on this port (0: none; needs llmos[gateway])",
    )

    def security_flags(self) -> list[str]:
        """What each child is told: --insecure, or where the keyring is."""
        return ["--insecure"] if self.insecure else ["--keys-dir", str(self.keys_path)]

    @property
    def keys_path(self) -> Path:
        return Path(self.keys_dir) if self.keys_dir else default_keys_dir()


@dataclass(frozen=True)
class Ports:
    client: int
    worker: int
    kernel: int
    kernel_pub: int
    scheduler: int

    @classmethod
    def from_base(cls, base_port: int) -> Ports:
        return cls(base_port, base_port + 1, base_port + 2, base_port + 3, base_port + 4)

    @classmethod
    def of_broker(cls, base_port: int, index: int) -> Ports:
        """Broker `index`'s ports (its client, worker and scheduler ones; the kernel's are
        the first block's, which every broker shares)."""
        first = cls.from_base(base_port)
        own = cls.from_base(base_port + index * BROKER_PORT_STRIDE)
        return cls(own.client, own.worker, first.kernel, first.kernel_pub, own.scheduler)


def shard_name(service: str, index: int) -> str:
    """broker, broker-1, ...: the first keeps the plain name."""
    return service if index == 0 else f"{service}-{index}"


def check_brokers(config: UpConfig) -> None:
    """A usage error where --brokers is below 1 or its ports meet the /metrics ones."""
    if config.brokers < 1:
        raise click.UsageError(f"--brokers must be at least 1, not {config.brokers}")
    metrics = range(metrics_base_port(config), metrics_base_port(config) + num_metrics_ports(config))
    for index in range(1, config.brokers):
        ports = Ports.of_broker(config.base_port, index)
        clash = {ports.client, ports.worker, ports.scheduler} & set(metrics)
        if clash:
            raise click.UsageError(
                f"broker-{index}'s port {min(clash)} is a /metrics port "
                f"({metrics.start}-{metrics.stop - 1}); pass --metrics-base-port elsewhere"
            )


def num_metrics_ports(config: UpConfig) -> int:
    """kernel, scheduler, broker, each worker, then each further scheduler and broker."""
    return 3 + config.workers + 2 * (config.brokers - 1)


def metrics_names(config: UpConfig) -> list[str]:
    """The services in the order of their /metrics ports."""
    names = ["kernel", "scheduler", "broker", *(f"worker-{i}" for i in range(config.workers))]
    for index in range(1, config.brokers):
        names += [shard_name("scheduler", index), shard_name("broker", index)]
    return names


def client_addresses(config: UpConfig) -> list[str]:
    """Where local clients reach each broker."""
    host = connect_host(config.host)
    return [tcp(Ports.of_broker(config.base_port, i).client, host) for i in range(config.brokers)]


class LaunchError(Exception):
    """The stack could not be brought up; the message says which process and why."""


def broker_journal_path(client_port: int) -> Path:
    """One journal per stack: two `llmos up` on other ports do not share one."""
    return llmos_home() / f"broker-journal-{client_port}.sqlite3"


def audit_log_path(client_port: int) -> Path:
    """One audit log per stack, as for the journal."""
    return llmos_home() / f"audit-{client_port}.jsonl"


def metrics_base_port(config: UpConfig) -> int:
    return config.metrics_base_port or config.base_port + METRICS_PORT_OFFSET


def connect_host(host: str) -> str:
    """Where local clients reach a service bound on `host`."""
    return DEFAULT_HOST if host in ("0.0.0.0", "*") else host


def plan_children(config: UpConfig, model_path: str) -> list[ChildSpec]:
    """The processes `llmos up` starts, in start order, with the shared flag names."""
    ports = Ports.from_base(config.base_port)
    host = connect_host(config.host)

    def bind(port: int) -> str:
        return tcp(port, config.host)

    metrics_ports = dict(zip(metrics_names(config), range(metrics_base_port(config), 1 << 16), strict=False))

    def service(name: str, *flags: str) -> ChildSpec:
        metrics = ["--metrics-port", str(metrics_ports[name]), "--metrics-host", config.host]
        service_name = name.split("-")[0]
        argv = [sys.executable, "-m", "llmos", service_name, *flags, *metrics, *config.security_flags()]
        return ChildSpec(name, argv, is_worker=service_name == "worker")

    def scheduler(index: int) -> ChildSpec:
        own = Ports.of_broker(config.base_port, index)
        return service(
            shard_name("scheduler", index),
            "--scheduler-bind",
            bind(own.scheduler),
            "--kernel-pub-address",
            tcp(ports.kernel_pub, host),
            "--policy",
            config.policy,
        )

    def broker(index: int) -> ChildSpec:
        own = Ports.of_broker(config.base_port, index)
        return service(
            shard_name("broker", index),
            "--client-bind",
            bind(own.client),
            "--worker-bind",
            bind(own.worker),
            "--scheduler-address",
            tcp(own.scheduler, host),
            "--journal",
            str(broker_journal_path(own.client)),
            "--audit-log",
            str(audit_log_path(own.client)),
        )

    children = [
        service("kernel", "--kernel-bind", bind(ports.kernel), "--kernel-pub-bind", bind(ports.kernel_pub)),
        scheduler(0),
        broker(0),
    ]
    for index in range(1, config.brokers):
        children += [scheduler(index), broker(index)]
    for index in range(config.workers):
        worker_id = f"worker-{index}"
        own = Ports.of_broker(config.base_port, index % config.brokers)
        children.append(
            service(
                worker_id,
                "--broker-worker-address",
                tcp(own.worker, host),
                "--kernel-address",
                tcp(ports.kernel, host),
                "--model",
                model_path,
                "--device",
                config.device,
                "--threads",
                str(config.threads),
                "--worker-id",
                worker_id,
            )
        )
    if config.gateway_port:
        children.append(
            ChildSpec("gateway", gateway_argv(config, ",".join(client_addresses(config)), model_path))
        )
    return children


def gateway_argv(config: UpConfig, broker_address: str, model_path: str = "") -> list[str]:
    """`llmos gateway` in front of this stack's broker; in a secure stack its broker key is
    the keyring's admin key (the SDK's default), which may act for any tenant. When the
    workers serve a model folder, its tokenizer's chat template renders chat requests."""
    argv = [
        sys.executable,
        "-m",
        "llmos",
        "gateway",
        "--host",
        config.host,
        "--port",
        str(config.gateway_port),
    ]
    argv += ["--broker-address", broker_address]
    if model_path and Path(model_path, "tokenizer_config.json").is_file():
        argv += ["--tokenizer", model_path]
    return argv + (["--insecure"] if config.insecure else [])


def wait_until_ready(
    supervisor: Supervisor,
    kernel_address: str,
    broker_addresses: list[str],
    num_workers: int,
    timeout_s: float,
    waiting: Waiting | None = None,
) -> None:
    """Block until the kernel answers and the brokers have `num_workers` workers between
    them; say each service as it comes up, and what is still awaited, to `waiting`."""
    waiting = waiting or Waiting(echo=lambda _: None)
    brokers = [shard_name(BROKER, index) for index in range(len(broker_addresses))]
    readiness = Readiness([f"worker-{index}" for index in range(num_workers)], brokers)
    deadline = time.monotonic() + timeout_s
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(Client(a, timeout_s=PROBE_TIMEOUT_S)) for a in broker_addresses]
        while True:
            for name, status in supervisor.newly_exited():
                raise LaunchError(
                    f"{name} exited with status {status} before llmos was ready; "
                    f"last lines of {supervisor.log_path(name)}:\n"
                    f"{supervisor.log_tail(name)}"
                )
            if time.monotonic() > deadline:
                raise LaunchError(
                    f"llmos was not ready after {timeout_s:g} s: still waiting for "
                    f"{readiness.waiting_for}; logs are in {supervisor.log_dir}"
                )
            waiting.waiting_for(readiness.waiting_for)
            try:
                if KERNEL not in readiness.ready_names:
                    query_kernel(kernel_address, PROBE_TIMEOUT_S)
                    report(waiting, readiness.kernel_answered())
                for broker, client in zip(brokers, clients, strict=True):
                    report(waiting, readiness.broker_answered(client.status(), broker))
                if readiness.is_ready:
                    return
            except LlmosError:
                pass  # not up yet: the deadline above decides when to stop trying
            time.sleep(PROBE_INTERVAL_S)


def report(waiting: Waiting, lines: list[str]) -> None:
    for line in lines:
        waiting.done(line)


def supervise(supervisor: Supervisor) -> NoReturn:
    """Once up: restart each child that dies, after its backoff, until Ctrl-C / SIGTERM."""
    while True:
        now_s = time.monotonic()
        supervisor.schedule_restarts(now_s)
        supervisor.restart_due(now_s)
        time.sleep(WATCH_INTERVAL_S)


def run_demo(address: str, prompt: str) -> None:
    click.echo(f"demo> {prompt}")
    try:
        with Client(address) as client:
            request_id = client.submit(prompt)
            for chunk in client.stream(request_id):
                click.echo(chunk.text, nl=False)
            click.echo()
    except LlmosError as exc:
        click.echo(f"\ndemo failed: {exc.code_name}: {exc.message}", err=True)


def resolve_model(model: str) -> str:
    """`model`, or the embedded llmos-demo model's directory (copied on first use) when empty."""
    if model:
        return model
    from llmos.demo_model import ensure_demo_model

    try:
        return str(ensure_demo_model())
    except OSError as exc:
        raise click.ClickException(
            f"cannot copy the embedded demo model ({exc}); pass --model DIR instead"
        ) from exc


def use_keys(config: UpConfig) -> None:
    """Make the keyring on first use; this process's own clients (readiness, demo) use it too."""
    if config.insecure:
        os.environ[INSECURE_ENV] = "1"
        log.warning("--insecure: every service speaks plain TCP; any process that reaches a port may speak")
        return
    keyring = open_keyring(config.keys_path)
    os.environ[KEYS_DIR_ENV] = str(keyring.keys_dir)
    os.environ.pop(INSECURE_ENV, None)
    click.echo(f"llmos keys: {keyring.keys_dir} (CURVE on every socket; `llmos keys --help`)")


def run(config: UpConfig) -> None:
    setup_logging("up")
    log_dir = Path(config.log_dir) if config.log_dir else llmos_home() / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    ports = Ports.from_base(config.base_port)
    host = connect_host(config.host)
    check_brokers(config)
    addresses = client_addresses(config)
    model_path = resolve_model(config.model)
    if config.gateway_port and missing_extra("gateway"):
        raise click.ClickException(
            f"--gateway-port: 'llmos gateway' is unavailable: {missing_extra('gateway')}"
        )
    use_keys(config)
    supervisor = Supervisor(log_dir)
    failure: LaunchError | None = None
    interrupt_on_sigterm()  # SIGTERM stops `llmos up` exactly like Ctrl-C
    try:
        for spec in plan_children(config, model_path):
            supervisor.start(spec)
        click.echo(f"llmos logs: {log_dir}")
        # to stderr: stdout keeps the lines scripts read (where the logs are, that it is up)
        with Waiting(echo=lambda line: click.echo(f"llmos: {line}", err=True)) as waiting:
            wait_until_ready(
                supervisor,
                tcp(ports.kernel, host),
                addresses,
                config.workers,
                config.ready_timeout_s,
                waiting,
            )
        brokers = f", {config.brokers} brokers" if config.brokers > 1 else ""
        click.echo(
            f"llmos is up: clients connect to {', '.join(addresses)} "
            f"({plural(config.workers, 'worker')}{brokers}, model {model_path}); Ctrl-C stops it"
        )
        base = metrics_base_port(config)
        names = metrics_names(config)
        click.echo(
            f"llmos metrics: http://{host}:PORT/metrics (and /health, /ready): "
            + ", ".join(f"{name} {base + index}" for index, name in enumerate(names))
        )
        if config.gateway_port:
            click.echo(f"llmos gateway: http://{host}:{config.gateway_port}/v1 (OpenAI-compatible)")
        if config.demo:
            run_demo(addresses[0], config.demo)
        supervise(supervisor)
    except KeyboardInterrupt:
        click.echo("llmos: stopping", err=True)
    except LaunchError as exc:
        failure = exc
    finally:
        # a second Ctrl-C must not cut the shutdown short and leave children behind
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        supervisor.stop()
    if failure is not None:
        raise click.ClickException(str(failure))


@click.command("up")
@options_from(UpConfig)
def up(**kwargs: Any) -> None:  # each value click made of its field's type (options_from)
    """Start kernel, scheduler, broker and N workers on this machine, each its own process.

    Ports: clients --base-port, workers +1, kernel +2, kernel pub +3, scheduler +4; with
    --brokers, broker i > 0 on the same layout from base port + 100 * i.
    """
    run(UpConfig(**kwargs))
