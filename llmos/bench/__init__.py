"""`llmos bench`: benchmarks. Imported only when `llmos bench` runs (torch comes with it)."""

from __future__ import annotations

import click

from llmos.bench.engine import engine


@click.group("bench")
def bench() -> None:
    """Benchmarks (in-process; figures on stdout, one JSON line last)."""


bench.add_command(engine)
