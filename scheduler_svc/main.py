"""`llmos scheduler` / `python -m scheduler_svc`."""

from typing import Any

import click

from llmos.config import options_from
from scheduler_svc.config import SchedulerConfig


@click.command("scheduler", help="Run the scheduler: places pending requests on workers by policy.")
@options_from(SchedulerConfig)
def command(**kwargs: Any) -> None:  # each value click made of its field's type (options_from)
    from scheduler_svc.service import run

    try:
        config = SchedulerConfig(**kwargs)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    run(config)


def main() -> None:
    command()
