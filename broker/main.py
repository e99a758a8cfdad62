"""`llmos broker` / `python -m broker`."""

from typing import Any

import click

from broker.config import BrokerConfig
from llmos.config import options_from


@click.command("broker", help="Run the broker: client front door, tiered queues, dispatch to workers.")
@options_from(BrokerConfig)
def command(**kwargs: Any) -> None:  # each value click made of its field's type (options_from)
    from broker.service import run

    run(BrokerConfig(**kwargs))


def main() -> None:
    command()
