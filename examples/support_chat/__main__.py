"""`python -m examples.support_chat`: play the customers against a running stack, print
the figures, write the plot."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict
from pathlib import Path

import click

from llmos.aio import AsyncClient
from llmos.client import default_broker_address

from .load import LoadConfig, LoadOutcome, run_load
from .metrics import CacheCounters, scrape
from .report import Figures, format_table, plot_ttft, summarise


async def run_support_chat(
    broker_address: str, config: LoadConfig, metrics_endpoints: list[str], timeout_s: float
) -> tuple[LoadOutcome, CacheCounters | None]:
    """The load, and the cache counters' growth over it when endpoints are given."""
    before = scrape(metrics_endpoints) if metrics_endpoints else None
    async with AsyncClient(broker_address, timeout_s=timeout_s) as client:
        outcome = await run_load(client, config)
    cache = scrape(metrics_endpoints) - before if before is not None else None
    return outcome, cache


def write_transcript(outcome: LoadOutcome, path: Path) -> None:
    """One JSON line per turn: the customer, the turn number and everything the turn holds."""
    with path.open("w") as out:
        for session in outcome.sessions:
            for number, turn in enumerate(session.turns, start=1):
                out.write(
                    json.dumps({"customer": session.customer_id, "turn": number, **asdict(turn)}) + "\n"
                )


@click.command()
@click.option("--broker", default=None, help="the broker's client address (default: as the llmos CLI)")
@click.option("--customers", "num_customers", type=int, default=8, show_default=True)
@click.option("--turns", "num_turns", type=int, default=4, show_default=True, help="questions per customer")
@click.option(
    "--batch-jobs",
    "num_batch_jobs",
    type=int,
    default=16,
    show_default=True,
    help="batch-tier loops, each sending long requests back to back while the customers chat",
)
@click.option("--answer-max-tokens", type=int, default=48, show_default=True)
@click.option("--batch-max-tokens", type=int, default=256, show_default=True)
@click.option(
    "--think-time-s",
    type=float,
    default=1.0,
    show_default=True,
    help="a customer's mean pause before each question (uniform in 0.5x to 1.5x)",
)
@click.option("--slo-ttft-ms", type=float, default=500.0, show_default=True, help="the objective: p95 TTFT")
@click.option(
    "--metrics",
    "metrics_endpoints",
    multiple=True,
    help="a /metrics endpoint (PORT, HOST:PORT or URL) of the broker or a worker, repeatable: "
    "the prefix-cache hit rate needs the broker's and every worker's",
)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option(
    "--transcript", "transcript_path", type=click.Path(dir_okay=False, path_type=Path), default=None
)
@click.option(
    "--timeout-s",
    type=float,
    default=300.0,
    show_default=True,
    help="how long a request may wait with nothing arriving (a queued batch request waits long)",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-v", "--verbose", is_flag=True, help="log each turn")
def main(
    broker: str | None,
    num_customers: int,
    num_turns: int,
    num_batch_jobs: int,
    answer_max_tokens: int,
    batch_max_tokens: int,
    think_time_s: float,
    slo_ttft_ms: float,
    metrics_endpoints: tuple[str, ...],
    plot_path: Path | None,
    transcript_path: Path | None,
    timeout_s: float,
    seed: int,
    verbose: bool,
) -> Figures:
    """N customers chat with the support assistant on the interactive tier while batch jobs
    flood the stack; prints TTFT per turn against the objective, the prefix-cache hit rate,
    and a final JSON line of the figures."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    if num_customers < 1 or num_turns < 1:
        raise click.BadParameter("at least one customer and one turn")
    config = LoadConfig(
        num_customers=num_customers,
        num_turns=num_turns,
        num_batch_jobs=num_batch_jobs,
        answer_max_tokens=answer_max_tokens,
        batch_max_tokens=batch_max_tokens,
        think_time_s=think_time_s,
        seed=seed,
    )
    address = broker or default_broker_address()
    outcome, cache = asyncio.run(run_support_chat(address, config, list(metrics_endpoints), timeout_s))
    figures = summarise(outcome, slo_ttft_ms, cache)
    click.echo(format_table(figures))
    if plot_path is not None:
        plot_ttft(outcome, figures, plot_path)
        click.echo(f"plot: {plot_path}")
    if transcript_path is not None:
        write_transcript(outcome, transcript_path)
        click.echo(f"transcript: {transcript_path}")
    click.echo(json.dumps(figures.as_json()))
    return figures


if __name__ == "__main__":
    main()
