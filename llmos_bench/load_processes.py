"""Closed-loop load from several processes at once: the scale workloads of `bench sched`
and `bench gateway`.

Each process (`python -m MODULE SPEC_JSON`, e.g. llmos_bench.driver) runs its share of
the requests with its share of the in-flight bound, starts at a shared instant, and
prints a one-line JSON summary (`llmos_bench.driver.summarize_closed_loop`'s keys).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import click

CONNECTIONS_PER_CLIENT = 4


@dataclass(frozen=True)
class ClosedLoad:
    requests: int  # in all
    clients: int  # load processes
    in_flight: int  # across them all
    max_tokens: int
    seed: int
    drain_timeout_s: float


def run_closed_loops(
    module: str, targets: list[dict[str, Any]], load: ClosedLoad, start_delay_s: float
) -> list[dict[str, Any]]:
    """Start `load.clients` processes of `module`, process i aimed at target i modulo
    their number (an address or URL); every one starts `start_delay_s` from now; their
    summaries, in order."""
    start_at_s = time.monotonic() + start_delay_s  # CLOCK_MONOTONIC is system-wide
    processes = []
    for index in range(load.clients):
        spec = {
            **targets[index % len(targets)],
            "requests": load.requests // load.clients + (index < load.requests % load.clients),
            "seed": load.seed * 1000 + index,
            "num_live": load.in_flight // load.clients,
            "max_tokens": load.max_tokens,
            "connections": CONNECTIONS_PER_CLIENT,
            "start_at_s": start_at_s,
            "drain_timeout_s": load.drain_timeout_s,
        }
        command = [sys.executable, "-m", module, json.dumps(spec)]
        processes.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True))
    summaries = []
    for process in processes:
        output, _ = process.communicate()
        if process.returncode != 0:
            raise click.ClickException(f"a load process ({module}) exited with {process.returncode}")
        summaries.append(json.loads(output.strip().splitlines()[-1]))
    return summaries


def totals(summaries: list[dict[str, Any]]) -> tuple[int, float, dict[str, int]]:
    """(requests completed, seconds from the first send to the last answer, errors by code)."""
    completed = sum(summary["completed"] for summary in summaries)
    wall_s = max(summary["last_finish_s"] for summary in summaries) - min(
        summary["first_submit_s"] for summary in summaries
    )
    errors: dict[str, int] = {}
    for summary in summaries:
        for code, count in summary["errors"].items():
            errors[code] = errors.get(code, 0) + count
    return completed, wall_s, errors
