"""The figures of a run: TTFT per turn against the objective, placement, the batch
flood's throughput, the prefix-cache hit rate; as a table, a plot and one JSON line."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from .load import LoadOutcome
from .metrics import CacheCounters


@dataclass(frozen=True)
class TurnFigures:
    turn: int  # 1-based
    num_answers: int
    ttft_p50_ms: float
    ttft_p95_ms: float
    mean_prompt_tokens: float
    same_worker_fraction: float | None  # placed where the customer's previous turn ran


@dataclass(frozen=True)
class Figures:
    slo_ttft_ms: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    meets_slo: bool
    turns: list[TurnFigures]
    num_answers: int
    num_batch_requests: int
    num_batch_tokens: int
    prefix_cache_hit_rate: float | None  # None: no /metrics endpoints were given

    def as_json(self) -> dict[str, object]:
        return asdict(self)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest value with `fraction` of them at or below it."""
    assert values, "a percentile of nothing"
    ordered = sorted(values)
    return ordered[max(math.ceil(fraction * len(ordered)) - 1, 0)]


def summarise(outcome: LoadOutcome, slo_ttft_ms: float, cache: CacheCounters | None) -> Figures:
    num_turns = max(len(s.turns) for s in outcome.sessions)
    turns = [turn_figures(outcome, index) for index in range(num_turns)]
    all_ttft_ms = [t.ttft_s * 1000 for s in outcome.sessions for t in s.turns]
    p95_ms = percentile(all_ttft_ms, 0.95)
    return Figures(
        slo_ttft_ms=slo_ttft_ms,
        ttft_p50_ms=round(percentile(all_ttft_ms, 0.5), 1),
        ttft_p95_ms=round(p95_ms, 1),
        meets_slo=p95_ms <= slo_ttft_ms,
        turns=turns,
        num_answers=len(all_ttft_ms),
        num_batch_requests=outcome.batch.num_requests,
        num_batch_tokens=outcome.batch.num_generated_tokens,
        prefix_cache_hit_rate=None if cache is None or cache.hit_rate is None else round(cache.hit_rate, 3),
    )


def turn_figures(outcome: LoadOutcome, index: int) -> TurnFigures:
    turns = [s.turns[index] for s in outcome.sessions if len(s.turns) > index]
    ttft_ms = [t.ttft_s * 1000 for t in turns]
    same_worker = [
        s.turns[index].worker_id == s.turns[index - 1].worker_id
        for s in outcome.sessions
        if index > 0 and len(s.turns) > index
    ]
    return TurnFigures(
        turn=index + 1,
        num_answers=len(turns),
        ttft_p50_ms=round(percentile(ttft_ms, 0.5), 1),
        ttft_p95_ms=round(percentile(ttft_ms, 0.95), 1),
        mean_prompt_tokens=round(sum(t.prompt_tokens for t in turns) / len(turns), 1),
        same_worker_fraction=round(sum(same_worker) / len(same_worker), 3) if same_worker else None,
    )


def format_table(figures: Figures) -> str:
    header = f"{'turn':>4}  {'answers':>7}  {'TTFT p50 ms':>11}  {'TTFT p95 ms':>11}  "
    header += f"{'prompt tokens':>13}  {'same worker':>11}"
    rows = [header]
    for t in figures.turns:
        same = "-" if t.same_worker_fraction is None else f"{t.same_worker_fraction:.0%}"
        rows.append(
            f"{t.turn:>4}  {t.num_answers:>7}  {t.ttft_p50_ms:>11.1f}  {t.ttft_p95_ms:>11.1f}  "
            f"{t.mean_prompt_tokens:>13.1f}  {same:>11}"
        )
    verdict = "meets" if figures.meets_slo else "MISSES"
    rows.append(
        f"all turns: TTFT p50 {figures.ttft_p50_ms:.1f} ms, p95 {figures.ttft_p95_ms:.1f} ms: "
        f"{verdict} the objective p95 <= {figures.slo_ttft_ms:g} ms"
    )
    rows.append(
        f"batch flood: {figures.num_batch_requests} requests, {figures.num_batch_tokens} tokens finished"
    )
    rate = figures.prefix_cache_hit_rate
    rows.append(
        "prefix cache: "
        + (
            "not measured (give --metrics)"
            if rate is None
            else f"{rate:.1%} of the conversations' prompt tokens"
        )
    )
    return "\n".join(rows)


def plot_ttft(outcome: LoadOutcome, figures: Figures, path: Path) -> None:
    """Each answer's TTFT by turn, the p50 and p95 per turn, and the objective's line."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for session in outcome.sessions:
        session_turns = range(1, len(session.turns) + 1)
        ax.scatter(session_turns, [t.ttft_s * 1000 for t in session.turns], s=14, color="0.6", zorder=2)
    numbers = [t.turn for t in figures.turns]
    ax.plot(numbers, [t.ttft_p50_ms for t in figures.turns], marker="o", label="p50")
    ax.plot(numbers, [t.ttft_p95_ms for t in figures.turns], marker="s", label="p95")
    ax.axhline(
        figures.slo_ttft_ms, color="red", linestyle="--", label=f"objective {figures.slo_ttft_ms:g} ms"
    )
    ax.set_xticks(numbers)
    ax.set_xlabel("turn of the conversation")
    ax.set_ylabel("time to first token (ms)")
    ax.set_title(f"support chat, interactive tier, {figures.num_batch_requests} batch requests alongside")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
