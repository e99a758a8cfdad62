"""Classify a stream of financial headlines on the batch tier, score the classifier on
the held-out headlines, follow a rolling sentiment index per company, raise alerts and
plot the indices.

    python -m examples.sentiment_monitor --broker-address tcp://127.0.0.1:5555

Needs a stack serving the classifier `python -m examples.sentiment_monitor.build_model`
writes (README.md). The last line printed is a JSON object of the figures.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import click

from examples.sentiment_monitor.data import Headline, load_headlines, news_stream, training_headlines
from examples.sentiment_monitor.monitor import (
    DEFAULT_THRESHOLD,
    DEFAULT_WINDOW,
    SentimentMonitor,
    sentiment_of,
)
from examples.sentiment_monitor.plot import write_plot
from llmos.cli import broker_address_option, report_error
from llmos.client import Client
from llmos.errors import LlmosError

SMALL_NUM_DAYS = 12  # --small: the first 12 days of the stream, 72 headlines


@dataclass(frozen=True)
class Classified:
    headline: Headline
    label: str
    scores: dict[str, float]


@dataclass(frozen=True)
class Throughput:
    num_requests: int
    num_headlines: int
    prompt_tokens: int
    elapsed_s: float
    model: str
    worker_ids: tuple[str, ...]

    @property
    def headlines_per_s(self) -> float:
        return self.num_headlines / self.elapsed_s if self.elapsed_s > 0 else 0.0


def classify_stream(
    client: Client, stream: list[Headline], batch_size: int, tier: str, model: str
) -> tuple[list[Classified], Throughput]:
    """Every headline through the classification path, `batch_size` headlines a request."""
    classified: list[Classified] = []
    prompt_tokens = 0
    models, worker_ids = set(), set()
    started_s = time.perf_counter()
    for start in range(0, len(stream), batch_size):
        chunk = stream[start : start + batch_size]
        result = client.classify([headline.text for headline in chunk], tier=tier, model=model)
        prompt_tokens += result.usage.prompt_tokens
        models.add(result.model)
        worker_ids.add(result.worker_id)
        for headline, classification in zip(chunk, result.classifications, strict=True):
            scores = {score.label: score.score for score in classification.scores}
            classified.append(Classified(headline, classification.label, scores))
    throughput = Throughput(
        num_requests=-(-len(stream) // batch_size),
        num_headlines=len(stream),
        prompt_tokens=prompt_tokens,
        elapsed_s=time.perf_counter() - started_s,
        model=",".join(sorted(models)),
        worker_ids=tuple(sorted(worker_ids)),
    )
    return classified, throughput


def held_out_scores(classified: list[Classified], majority_label: str) -> dict[str, float | int]:
    """The classifier's accuracy on the held-out headlines, and always answering `majority_label`'s."""
    held_out = [item for item in classified if item.headline.is_held_out]
    assert held_out, "the stream holds no held-out headline"
    num_correct = sum(item.label == item.headline.label for item in held_out)
    num_majority = sum(item.headline.label == majority_label for item in held_out)
    return {
        "num_held_out": len(held_out),
        "accuracy": num_correct / len(held_out),
        "majority_baseline": num_majority / len(held_out),
    }


def run_monitor(classified: list[Classified], window: int, threshold: float) -> SentimentMonitor:
    monitor = SentimentMonitor(window=window, threshold=threshold)
    for item in classified:
        headline = item.headline
        alert = monitor.observe(headline.company, headline.day, sentiment_of(item.scores), headline.text)
        if alert is not None:
            click.echo(
                f"ALERT day {alert.day:2d}  {alert.company:<18} index {alert.index:+.2f} "
                f"({alert.direction})  after: {alert.headline}"
            )
    return monitor


@click.command()
@broker_address_option
@click.option("--tier", default="batch", show_default=True, help="queue tier of the classify requests")
@click.option("--model", default="", help="classification model to use (empty: any)")
@click.option("--batch-size", type=int, default=32, show_default=True, help="headlines per request")
@click.option("--days", type=int, default=0, help="days of the stream to classify (0: all 30)")
@click.option("--small", is_flag=True, help=f"the first {SMALL_NUM_DAYS} days only (for tests)")
@click.option("--window", type=int, default=DEFAULT_WINDOW, show_default=True, help="headlines per index")
@click.option("--threshold", type=float, default=DEFAULT_THRESHOLD, show_default=True, help="alert level")
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("sentiment_index.png"),
    show_default=True,
    help="where to write the figure (PNG)",
)
@click.option("--timeout-s", type=float, default=120.0, show_default=True, help="per request")
def main(
    broker_address: str,
    tier: str,
    model: str,
    batch_size: int,
    days: int,
    small: bool,
    window: int,
    threshold: float,
    plot_path: Path,
    timeout_s: float,
) -> None:
    """Financial news sentiment monitoring through llmos' classification path."""
    headlines = load_headlines()
    stream = news_stream(headlines, SMALL_NUM_DAYS if small else days)
    majority_label = Counter(h.label for h in training_headlines(headlines)).most_common(1)[0][0]
    try:
        with Client(broker_address, timeout_s=timeout_s) as client:
            classified, throughput = classify_stream(client, stream, batch_size, tier, model)
    except LlmosError as exc:
        sys.exit(report_error(exc, broker_address, is_accepted=False))
    click.echo(
        f"classified {throughput.num_headlines} headlines in {throughput.num_requests} requests on tier "
        f"{tier!r} in {throughput.elapsed_s:.2f} s ({throughput.headlines_per_s:.0f} headlines/s, "
        f"{throughput.prompt_tokens} tokens) by {throughput.model} on {', '.join(throughput.worker_ids)}"
    )
    scores = held_out_scores(classified, majority_label)
    click.echo(
        f"held-out accuracy {scores['accuracy']:.3f} on {scores['num_held_out']} headlines; "
        f"majority-class baseline (always {majority_label!r}) {scores['majority_baseline']:.3f}"
    )
    monitor = run_monitor(classified, window, threshold)
    latest = monitor.latest()
    for company, index in sorted(latest.items()):
        click.echo(f"index now  {company:<18} {index:+.2f}")
    write_plot(monitor, plot_path)
    click.echo(f"plot: {plot_path}")
    figures = {
        "example": "sentiment_monitor",
        "tier": tier,
        "model": throughput.model,
        "num_headlines": throughput.num_headlines,
        **scores,
        "majority_label": majority_label,
        "headlines_per_s": round(throughput.headlines_per_s, 1),
        "final_index": {company: round(index, 3) for company, index in sorted(latest.items())},
        "alerts": [
            {"company": a.company, "day": a.day, "index": round(a.index, 3), "direction": a.direction}
            for a in monitor.alerts
        ],
        "plot": str(plot_path),
    }
    click.echo(json.dumps(figures))
