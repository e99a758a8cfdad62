"""`llmos bench engine --churn-requests N`: the engine with requests coming and going,
its newcomers prefilled in the decode forward (mixed steps) against apart.

The engine alone serves N requests with max_num_seqs = the compared concurrency,
a waiting request put into the batch the instant one ends (`run_closed_loop`), and
answer lengths drawn evenly from 1 to 2 x `--new-tokens` - 1 (as `--stack-requests`
draws them), so slots free one at a time and nearly every step has newcomers. Each
of `--rounds` turns runs the same requests with mixed steps and without (the
newcomers' prefill as a second forward of the step), which first alternating;
the medians make the ratio.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llmos_bench.engine_stack import answer_lengths
from llmos_bench.load import run_closed_loop
from llmos_bench.stats import compare_rounds


def measure_mixed_vs_apart(bench: Any, echo: Callable[[str], None]) -> dict[str, Any] | None:
    """The churn runs, or None for an engine or model without mixed steps."""
    config = bench.config
    max_num_seqs = config.compare_concurrency
    lengths = answer_lengths(config.churn_requests, config.new_tokens, config.seed)
    prompts = bench.prompts_for(config.churn_requests, config.seed + 4)
    max_model_len = max(len(ids) for ids in prompts) + max(lengths)
    probe = bench.make_engine(max_num_seqs, max_model_len=max_model_len, mixed_steps=True)
    if not getattr(getattr(probe, "runner", None), "supports_mixed_steps", False):
        echo("churn: this engine or model has no mixed steps; skipped")
        return None
    rounds = []
    for index in range(config.rounds):
        sides = [("mixed", True), ("apart", False)][:: -1 if index % 2 else 1]
        echo(
            f"round {index + 1} of {config.rounds}: {len(prompts)} requests coming and going, "
            f"{max_num_seqs} at once, {sides[0][0]} first ..."
        )
        figures = {}
        for side, mixed_steps in sides:  # who goes first alternates: no side always runs cold
            engine = bench.make_engine(max_num_seqs, max_model_len=max_model_len, mixed_steps=mixed_steps)
            figures[side] = bench.load_figures(run_closed_loop(engine, prompts, max_num_seqs, lengths), ())
        rounds.append(figures)
        echo(
            f"  mixed {figures['mixed']['output_tokens_per_s']:.1f} output tokens/s, "
            f"apart {figures['apart']['output_tokens_per_s']:.1f}"
        )
    compared = compare_rounds(rounds, "mixed", "apart")
    return {
        "requests": len(prompts),
        "max_num_seqs": max_num_seqs,
        "mean_answer_tokens": sum(lengths) / len(lengths),
        "mixed_vs_apart": compared.pop("ratio"),
        **compared,
    }
