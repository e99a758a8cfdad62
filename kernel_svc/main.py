"""`llmos kernel` / `python -m kernel_svc`."""

from typing import Any

import click

from kernel_svc.config import KernelConfig
from llmos.config import options_from


@click.command("kernel", help="Run the resource kernel: worker registry, KV block ledger, resource view.")
@options_from(KernelConfig)
def command(**kwargs: Any) -> None:  # each value click made of its field's type (options_from)
    from kernel_svc.service import run

    try:
        config = KernelConfig(**kwargs)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    run(config)


def main() -> None:
    command()
