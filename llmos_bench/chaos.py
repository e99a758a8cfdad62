"""`llmos bench chaos`: a seeded workload while processes are SIGKILLed and restarted.

One run starts a kernel, a scheduler, a broker (tiers interactive, standard,
batch) and `--workers` simulated workers, one per process, on free ports. SDK
clients (`--clients` threads, each with its own `llmos.client.Client`) stream
`--requests` seeded requests across the tiers, one at a time each, while a
chaos thread walks a seeded kill schedule (`llmos_bench.chaos_schedule`): kill
k goes out once (k+1)/(kills+1) of the requests have completed and an answer
has completed since the last restart, so every kill lands in the load and
each one's recovery is its own. It SIGKILLs the process, waits
`--restart-delay-s`, and starts it again with the same command line.

Each request is judged as `llmos_bench.chaos_load` says. A kill's recovery
time runs from the kill to, for a worker, the last of the answers moved off a
worker that completed before the next kill (the broker noticed the death and
another worker finished them); for the others, the first answer completed
after the kill: after the restart, for the broker, since answers it sent
before it died may still be on their way to the clients when the kill goes out. It prints a table, then
one JSON line; docs/benchmarks.md says what each figure means.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click

from llmos.config import option, options_from
from llmos_bench.chaos_load import End, Outcome, Progress, chaos_jobs, run_load
from llmos_bench.chaos_schedule import (
    BROKER,
    KERNEL,
    MIN_BROKER_KILLS,
    SCHEDULER,
    WORKER,
    ChaosStack,
    Kill,
    chaos_schedule,
)
from llmos_bench.percentiles import percentile

KINDS = (BROKER, SCHEDULER, KERNEL, WORKER)
POLL_S = 0.05
MAX_IDS_LISTED = 10  # of the lost, duplicated and errored requests, in the JSON line


@dataclass
class ChaosBenchConfig:
    requests: int = option(2000, "requests in all")
    seed: int = option(0, "seed of the workload and of the kill schedule")
    workers: int = option(3, "simulated workers, one process each")
    slots: int = option(8, "requests each simulated worker runs at once (max_num_seqs)")
    clients: int = option(8, "client threads, each with its own Client and one request at a time")
    max_tokens: int = option(16, "longest answer; each request asks for 1..this many tokens")
    kills: int = option(10, "kills in the schedule: the broker twice, scheduler, kernel, then workers")
    broker_kills: int = option(MIN_BROKER_KILLS, "of those, kills of the broker")
    schedule: str = option(
        "", "kill exactly these processes in this order (e.g. broker,sim-0) instead of a seeded schedule"
    )
    restart_delay_s: float = option(0.2, "a killed process is started again this long after its kill")
    max_restarts: int = option(100, "the broker's --max-restarts (workers a request may lose)")
    timeout_s: float = option(30.0, "a client waiting this long for any answer counts its request lost")
    log_dir: str = option("", "keep the processes' logs here (empty: a temporary directory)")
    json_only: bool = option(False, "print only the JSON line")

    def check(self) -> None:
        if self.requests < 1 or self.workers < 1 or self.slots < 1 or self.clients < 1 or self.max_tokens < 1:
            raise click.BadParameter(
                "--requests, --workers, --slots, --clients and --max-tokens must be at least 1"
            )
        if self.kills < 0 or self.broker_kills < 0:
            raise click.BadParameter("--kills and --broker-kills must not be negative")
        known = {BROKER, SCHEDULER, KERNEL, *(f"sim-{index}" for index in range(self.workers))}
        unknown = set(self.kill_names()) - known
        if unknown:
            raise click.BadParameter(
                f"--schedule: no process {', '.join(sorted(unknown))} (one of {sorted(known)})"
            )

    def kill_names(self) -> list[str]:
        """The processes to kill, in order: --schedule, or a seeded schedule."""
        if self.schedule:
            return [name.strip() for name in self.schedule.split(",") if name.strip()]
        return chaos_schedule(self.kills, self.workers, self.seed, self.broker_kills)


@click.command("chaos")
@options_from(ChaosBenchConfig)
def chaos(**kwargs: Any) -> None:
    """A seeded workload while workers, broker, scheduler and kernel are killed and restarted."""
    config = ChaosBenchConfig(**kwargs)
    config.check()
    echo = (lambda _: None) if config.json_only else click.echo
    summary = run_bench(config, echo)
    if not config.json_only:
        click.echo(format_report(summary))
    click.echo(json.dumps(summary))


def run_bench(config: ChaosBenchConfig, echo: Any = click.echo) -> dict[str, Any]:
    """One chaos run, as the dict the JSON line prints; `echo` gets a line per kill."""
    config.check()
    log_root = Path(config.log_dir) if config.log_dir else Path(tempfile.mkdtemp(prefix="llmos-chaos-"))
    schedule = config.kill_names()
    jobs = chaos_jobs(config.requests, config.max_tokens, config.seed)
    progress = Progress()
    stop = threading.Event()
    kills: list[Kill] = []
    log_root.mkdir(parents=True, exist_ok=True)
    client_log = log_to(log_root / "clients.log")
    try:
        with ChaosStack(log_root, config.workers, config.slots, config.max_restarts) as stack:
            chaos_thread = threading.Thread(
                target=run_schedule,
                args=(stack, schedule, config, progress, stop, kills, echo),
                name="chaos",
            )
            started_s = time.monotonic()
            chaos_thread.start()
            try:
                outcomes = run_load(stack.broker_address, jobs, config.clients, config.timeout_s, progress)
            finally:
                stop.set()
                chaos_thread.join()
            duration_s = time.monotonic() - started_s
            exited = stack.group.first_exited()
    finally:
        logging.getLogger().removeHandler(client_log)
        client_log.close()
        if not config.log_dir:
            shutil.rmtree(log_root, ignore_errors=True)
    mark_recoveries(kills, outcomes)
    return summarize(config, schedule, outcomes, kills, started_s, duration_s, exited)


def log_to(path: Path) -> logging.Handler:
    """Send the SDK's log lines (its reconnects and resends) to `path` rather than
    stderr, next to the processes' logs; the handler, to remove when done."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(min(root.level or logging.INFO, logging.INFO))
    return handler


def run_schedule(
    stack: ChaosStack,
    schedule: list[str],
    config: ChaosBenchConfig,
    progress: Progress,
    stop: threading.Event,
    kills: list[Kill],
    echo: Any,
) -> None:
    """The chaos thread: each kill in `schedule` once its share of the requests has
    completed and an answer has completed since the last restart; appends to `kills`."""
    for number, name in enumerate(schedule):
        due_completed = config.requests * (number + 1) // (len(schedule) + 1)
        since_s = kills[-1].restarted_s if kills else 0.0
        while not stop.is_set() and not (
            progress.num_completed >= due_completed and progress.last_completed_s > since_s
        ):
            stop.wait(POLL_S)
        if stop.is_set():
            return
        kill = Kill(name, stack.kill(name))
        time.sleep(config.restart_delay_s)
        kill.restarted_s = stack.restart(name)
        kills.append(kill)
        echo(f"kill {number + 1}/{len(schedule)}: {name} after {progress.num_completed} answers")


def mark_recoveries(kills: list[Kill], outcomes: list[Outcome]) -> None:
    """Each kill's `recovered_s`. For a worker: the last answer that moved off a worker
    (num_restarts > 0) and completed after the kill, before the next kill; the first
    answer completed after it where none moved (the worker ran nothing). For the
    others: the first answer completed after the kill, after the restart for the broker."""
    completions = sorted(o.finished_s for o in outcomes if o.end is End.COMPLETED)
    moved = sorted(o.finished_s for o in outcomes if o.end is End.COMPLETED and o.num_restarts > 0)
    for kill, next_kill_s in zip(kills, [k.killed_s for k in kills[1:]] + [math.inf], strict=True):
        if kill.kind == WORKER:
            moved_after = [at_s for at_s in moved if kill.killed_s < at_s <= next_kill_s]
            if moved_after:
                kill.recovered_s = moved_after[-1]
                continue
        after_s = kill.restarted_s if kill.kind == BROKER else kill.killed_s
        index = bisect.bisect_right(completions, after_s)
        if index < len(completions):
            kill.recovered_s = completions[index]


# ---------------------------------------------------------------- the JSON line


def summarize(
    config: ChaosBenchConfig,
    schedule: list[str],
    outcomes: list[Outcome],
    kills: list[Kill],
    started_s: float,
    duration_s: float,
    exited: tuple[str, int] | None,
) -> dict[str, Any]:
    def ids(predicate: Any) -> list[str]:
        return [o.job.request_id for o in outcomes if predicate(o)][:MAX_IDS_LISTED]

    counts = {end.value: sum(o.end is end for o in outcomes) for end in End if end is not End.PENDING}
    errors: dict[str, int] = {}
    for outcome in outcomes:
        if outcome.end not in (End.COMPLETED, End.PENDING):
            key = outcome.error if outcome.end is not End.LOST else "timeout"
            errors[key] = errors.get(key, 0) + 1
    recovery = {
        kind: {
            "kills": sum(k.kind == kind for k in kills),
            "p50_s": percentile((k.recovery_s for k in kills if k.kind == kind), 50),
            "p99_s": percentile((k.recovery_s for k in kills if k.kind == kind), 99),
        }
        for kind in KINDS
    }
    return {
        "config": asdict(config),
        "schedule": schedule,
        "requests": len(outcomes),
        **counts,
        "unfinished": sum(o.end is End.PENDING for o in outcomes),
        "duplicated": sum(o.is_duplicated for o in outcomes),
        "moved_off_a_worker": sum(o.num_restarts > 0 for o in outcomes),
        "errors": errors,
        "kills_done": len(kills),
        "kills_unrecovered": sum(not k.recovery_s >= 0 for k in kills),
        "kill_log": [
            {"name": k.name, "at_s": round(k.killed_s - started_s, 3), "recovery_s": k.recovery_s}
            for k in kills
        ],
        "recovery": recovery,
        "recovery_p99_s": recovery[BROKER]["p99_s"],
        "recovery_p99_all_s": percentile((k.recovery_s for k in kills), 99),
        "duration_s": duration_s,
        "answers_per_s": counts[End.COMPLETED.value] / duration_s if duration_s > 0 else None,
        "stack_exited": list(exited) if exited else None,
        "lost_ids": ids(lambda o: o.end is End.LOST),
        "duplicated_ids": ids(lambda o: o.is_duplicated),
        "errored_ids": ids(lambda o: o.end in (End.ERRORED, End.WRONGLY_REFUSED)),
    }


def format_report(summary: dict[str, Any]) -> str:
    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    lines = [
        f"chaos: {summary['requests']} requests, {summary['kills_done']} kills"
        f" in {summary['duration_s']:.1f} s",
        f"  completed {summary['completed']}  lost {summary['lost']}  duplicated {summary['duplicated']}"
        f"  errored {summary['errored']}  wrongly refused {summary['wrongly_refused']}"
        f"  refused (QUEUE_FULL) {summary['refused']}",
        f"  moved off a killed worker and finished elsewhere: {summary['moved_off_a_worker']}",
        "",
        f"  {'killed':<10} {'kills':>5} {'recovery p50':>13} {'recovery p99':>13}",
    ]
    for kind, row in summary["recovery"].items():
        lines.append(
            f"  {kind:<10} {row['kills']:>5} {seconds(row['p50_s']):>11} s {seconds(row['p99_s']):>11} s"
        )
    if summary["kills_done"] < len(summary["schedule"]):
        lines.append(
            f"  only {summary['kills_done']} of {len(summary['schedule'])} kills"
            " went out before the load ended"
        )
    if summary["errors"]:
        lines.append(f"  errors: {summary['errors']}")
    return "\n".join(lines)
