"""examples/support_chat against a real stack of tiny-model workers: every turn answered,
TTFT figures per turn, the plot written, and each turn's prompt built on the last one's,
which the workers' prefix caches serve."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from stack import Stack

from examples.support_chat.__main__ import main
from examples.support_chat.chat import ChatSession, Turn
from llmos.processes import free_port

pytestmark = pytest.mark.e2e

NUM_CUSTOMERS, NUM_TURNS, NUM_BATCH_JOBS = 3, 2, 2


class MetricsStack(Stack):
    """Two tiny-model workers and the broker, each serving /metrics on a port of its own."""

    def __init__(self, model_dir: Path, log_dir: Path) -> None:
        self.broker_metrics_port = free_port()
        self.worker_metrics_ports = [free_port(), free_port()]
        super().__init__(
            model_dir, log_dir, num_workers=2, broker_args=self.metrics_args(self.broker_metrics_port)
        )

    @staticmethod
    def metrics_args(port: int) -> tuple[str, ...]:
        return ("--metrics-port", str(port))

    def start_worker(self, index: int) -> None:
        self.worker_args = self.metrics_args(self.worker_metrics_ports[index])
        super().start_worker(index)

    @property
    def metrics_ports(self) -> list[int]:
        return [self.broker_metrics_port, *self.worker_metrics_ports]


def test_render_appends_each_turn_to_the_history():
    session = ChatSession("customer-0")
    first_prompt = session.render("When are you open?")
    session.turns.append(Turn(question="When are you open?", prompt=first_prompt, answer="Nine to six."))
    second_prompt = session.render("Do you deliver?")

    assert first_prompt.startswith("<|system|>\n" + session.system_prompt)
    assert first_prompt.endswith("<|user|>\nWhen are you open?\n<|assistant|>\n")
    assert second_prompt == first_prompt + "Nine to six.\n<|user|>\nDo you deliver?\n<|assistant|>\n"


def test_support_chat_runs_against_a_stack(tiny_model_dir, tmp_path):
    plot_path, transcript_path = tmp_path / "ttft.png", tmp_path / "transcript.jsonl"
    with MetricsStack(tiny_model_dir, tmp_path / "logs") as stack:
        args = [
            "--broker", stack.broker_address,
            "--customers", str(NUM_CUSTOMERS),
            "--turns", str(NUM_TURNS),
            "--batch-jobs", str(NUM_BATCH_JOBS),
            "--answer-max-tokens", "8",
            "--batch-max-tokens", "32",
            "--think-time-s", "0",
            "--plot", str(plot_path),
            "--transcript", str(transcript_path),
        ]  # fmt: skip
        for port in stack.metrics_ports:
            args += ["--metrics", str(port)]
        outcome = CliRunner().invoke(main, args, catch_exceptions=False)
        stack.check_alive()
    assert outcome.exit_code == 0, outcome.output
    figures = json.loads(outcome.output.strip().splitlines()[-1])
    turns = [json.loads(line) for line in transcript_path.read_text().splitlines()]

    # every customer's every turn was answered, and each has its TTFT
    assert sorted((t["customer"], t["turn"]) for t in turns) == [
        (f"customer-{c}", n) for c in range(NUM_CUSTOMERS) for n in range(1, NUM_TURNS + 1)
    ]
    assert all(t["generated_tokens"] > 0 and t["ttft_s"] > 0 and t["worker_id"] for t in turns)
    assert figures["num_answers"] == NUM_CUSTOMERS * NUM_TURNS
    assert [(t["turn"], t["num_answers"]) for t in figures["turns"]] == [
        (n, NUM_CUSTOMERS) for n in range(1, NUM_TURNS + 1)
    ]
    assert all(0 < t["ttft_p50_ms"] <= t["ttft_p95_ms"] for t in figures["turns"])
    assert plot_path.read_bytes().startswith(b"\x89PNG")

    # the history is the prefix: each later prompt starts with the earlier prompt and its answer
    by_customer: dict[str, list[dict]] = {}
    for turn in sorted(turns, key=lambda t: t["turn"]):
        by_customer.setdefault(turn["customer"], []).append(turn)
    for history in by_customer.values():
        for earlier, later in zip(history, history[1:]):
            assert later["prompt"].startswith(earlier["prompt"] + earlier["answer"])
            assert later["prompt_tokens"] > earlier["prompt_tokens"]
    # ... and the workers served it from their prefix caches
    assert figures["prefix_cache_hit_rate"] > 0
