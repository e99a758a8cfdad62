"""`llmos bench`: benchmarks. Each subcommand is imported only when it runs, so
`llmos bench sched` (and its load processes) never import torch."""

from __future__ import annotations

import importlib

import click

from llmos.signals import interrupt_on_sigterm

# name -> ("module:attribute", short help shown by `llmos bench --help` without importing it)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "chaos": (
        "llmos_bench.chaos:chaos",
        "Kill and restart workers, broker, scheduler and kernel under a seeded load; count what is lost.",
    ),
    "engine": (
        "llmos_bench.engine:engine",
        "Measure the llmos engine against transformers on one model, in one process.",
    ),
    "gateway": (
        "llmos_bench.gateway:gateway",
        "Measure the HTTP gateway against the ZeroMQ SDK on one stack: added TTFT, requests/s.",
    ),
    "sched": (
        "llmos_bench.sched:sched",
        "Compare the scheduling policies on the real processes with simulated workers.",
    ),
    "wire": (
        "llmos_bench.wire:wire",
        "Measure the broker's added latency for one request against a raw ZeroMQ echo and relay.",
    ),
}


class LazyBenchGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in SUBCOMMANDS:
            return None
        module_name, attribute = SUBCOMMANDS[cmd_name][0].split(":")
        return getattr(importlib.import_module(module_name), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_text) for name, (_, help_text) in SUBCOMMANDS.items()])


@click.group("bench", cls=LazyBenchGroup)
def bench() -> None:
    """Benchmarks (figures on stdout, one JSON line last)."""
    interrupt_on_sigterm()  # a benchmark killed politely stops its stack and removes its files
