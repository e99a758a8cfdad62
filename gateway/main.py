"""`llmos gateway` / `python -m gateway`."""

from typing import Any

import click

from gateway.config import GatewayConfig
from llmos.config import options_from


@click.command("gateway", help="Run an OpenAI-compatible HTTP gateway (/v1/completions, ...) to the broker.")
@options_from(GatewayConfig)
def command(**kwargs: Any) -> None:  # each value click made of its field's type (options_from)
    from gateway.brokers import broker_addresses
    from gateway.service import run

    try:
        broker_addresses(kwargs["broker_address"])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--broker-address") from None
    run(GatewayConfig(**kwargs))


def main() -> None:
    command()
