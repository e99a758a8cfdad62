"""`llmos embed TEXT...` and `llmos classify TEXT...`: the SDK's embed/classify from a shell.

Light to import (no torch), like `llmos submit`; `llmos.cli` loads this module
only when one of the two commands runs.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable
from typing import TypeVar

import click
from google.protobuf.json_format import MessageToJson

from llmos.cli import EXIT_INTERRUPTED, broker_address_option, report_error, submit
from llmos.client import Client
from llmos.errors import LlmosError, LlmosTimeout
from llmos.wire import pb

NUM_VALUES_SHOWN = 4

PoolingResult = TypeVar("PoolingResult", bound=pb.EmbedResult | pb.ClassifyResult)


def request_options(command: Callable) -> Callable:
    """The options embed and classify share (submit's names)."""
    for option in reversed(
        [
            broker_address_option,
            click.option("--model", default="", help="model to use (empty: any that does the task)"),
            click.option("--tier", default="", help="queue tier (empty: the broker's default)"),
            click.option("--tenant", default="", help="tenant for quotas (empty: default)"),
            click.option(
                "--deadline-ms",
                type=int,
                default=0,
                help="finish within this long or get DEADLINE_EXCEEDED (0: the tier's default)",
            ),
            click.option(
                "--timeout-s",
                type=float,
                default=60.0,
                show_default=True,
                help="give up when nothing arrives for this long",
            ),
            click.option("--json", "as_json", is_flag=True, help="print the whole result as JSON"),
            click.argument("texts", nargs=-1, required=True),
        ]
    ):
        command = option(command)
    return command


@click.command(epilog=submit.epilog)
@request_options
def embed(
    texts: tuple[str, ...], as_json: bool, broker_address: str, timeout_s: float, **options: object
) -> None:
    """Embed each TEXT (one input each; a single '-' reads one input per line of stdin)
    and print, per input, its dimension and first values. --json prints every value."""
    inputs = read_inputs(texts)
    result = call(Client.embed, inputs, broker_address, timeout_s, **options)
    if as_json:
        click.echo(MessageToJson(result, preserving_proto_field_name=True))
        return
    for text, embedding in zip(inputs, result.embeddings):
        values = ", ".join(f"{value:.4f}" for value in embedding.values[:NUM_VALUES_SHOWN])
        more = ", ..." if len(embedding.values) > NUM_VALUES_SHOWN else ""
        click.echo(f"{len(embedding.values)} dims  [{values}{more}]  {text}")


@click.command(epilog=submit.epilog)
@request_options
def classify(
    texts: tuple[str, ...], as_json: bool, broker_address: str, timeout_s: float, **options: object
) -> None:
    """Classify each TEXT (one input each; a single '-' reads one input per line of stdin)
    and print, per input, the top label and its probability. --json prints every label's."""
    inputs = read_inputs(texts)
    result = call(Client.classify, inputs, broker_address, timeout_s, **options)
    if as_json:
        click.echo(MessageToJson(result, preserving_proto_field_name=True))
        return
    width = max((len(c.label) for c in result.classifications), default=0)
    for text, classification in zip(inputs, result.classifications):
        click.echo(f"{classification.label:<{width}}  {classification.score:.4f}  {text}")


def read_inputs(texts: tuple[str, ...]) -> list[str]:
    """The arguments, or the non-empty lines of stdin for a single '-'."""
    if texts == ("-",):
        return [line for line in sys.stdin.read().splitlines() if line]
    return list(texts)


def call(
    verb: Callable[..., PoolingResult],
    inputs: list[str],
    broker_address: str,
    timeout_s: float,
    **options: object,
) -> PoolingResult:
    """Run `verb` (Client.embed or Client.classify); exit with submit's statuses on an error."""
    request_id = uuid.uuid4().hex
    with Client(broker_address, timeout_s=timeout_s) as client:
        try:
            result = verb(client, inputs, request_id=request_id, **options)
        except LlmosError as exc:
            if isinstance(exc, LlmosTimeout):
                client.cancel(request_id)  # we stop waiting, so the broker need not run it
            sys.exit(report_error(exc, broker_address, is_accepted=False))
        except KeyboardInterrupt:
            client.cancel(request_id)
            sys.exit(EXIT_INTERRUPTED)
    click.echo(usage_line(result), err=True)
    return result


def usage_line(result: pb.EmbedResult | pb.ClassifyResult) -> str:
    usage = result.usage
    return (
        f"usage: prompt_tokens={usage.prompt_tokens} queue={usage.queue_time_s:.3f}s "
        f"total={usage.total_time_s:.3f}s model={result.model} worker={result.worker_id}"
    )
