"""`llmos worker` and `python -m workers`.

This module must stay light: torch and transformers are imported by
`workers.service.run`, so `llmos --help` does not pay for them.
"""

from __future__ import annotations

import click

from llmos.config import options_from
from workers.config import WorkerConfig


@click.command("worker")
@options_from(WorkerConfig)
def command(**kwargs: object) -> None:
    """Load a model and serve requests dispatched by the broker."""
    config = WorkerConfig(**kwargs)
    if config.engine == "sim":
        from workers import sim  # no torch: hundreds of these fit on one machine

        sim.run(config)
        return
    from workers import service

    service.run(config)


def main() -> None:
    command()
