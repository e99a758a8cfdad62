"""`--plot DIR`: the benchmarks' figures as PNG charts, drawn with matplotlib's Agg backend
(no display needed). Each function takes the figures a run already made and returns the
paths it wrote; matplotlib is imported here only, when a run asks for charts."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

ENGINE_THROUGHPUT_PNG = "engine_throughput.png"
SCHED_TTFT_PNG = "sched_ttft.png"
SCHED_FAIR_SHARE_PNG = "sched_fair_share.png"
BASELINE_LABELS = {
    "sequential": "transformers generate, one at a time",
    "static_batch": "transformers generate, one static batch",
    "generate_batch": "transformers continuous batching",
}


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: never a window, works without a display
    import matplotlib.pyplot as plt

    return plt


def save(figure: Any, directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot().close(figure)
    return path


# ---------------------------------------------------------------- llmos bench engine


def plot_engine(summary: dict[str, Any], directory: Path) -> list[Path]:
    """Output tokens a second against concurrency: llmos's curve, and each baseline at the
    concurrency it ran at (one at a time: 1; the batches: the compared level)."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    runs = summary["llmos"]
    levels = [run["concurrency"] for run in runs]
    axes.plot(
        levels,
        [run["output_tokens_per_s"] for run in runs],
        marker="o",
        color="C0",
        label=f"llmos {summary['engine']}",
    )
    compared = summary["compare_concurrency"]
    for index, (name, figures) in enumerate(summary["baselines"].items(), start=1):
        if figures is None:
            continue
        concurrency = 1 if name == "sequential" else compared
        axes.scatter(
            [concurrency],
            [figures["output_tokens_per_s"]],
            marker="s",
            color=f"C{index}",
            label=BASELINE_LABELS[name],
        )
    axes.set_xscale("log", base=2)
    axes.set_xticks(levels, [str(level) for level in levels])
    axes.minorticks_off()
    axes.set_xlabel("concurrent requests")
    axes.set_ylabel("output tokens / s")
    axes.set_title(f"{summary['model']} on {summary['device_name']} ({summary['dtype']})", fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    return [save(figure, directory, ENGINE_THROUGHPUT_PNG)]


# ---------------------------------------------------------------- llmos bench sched


def plot_sched(
    summary: dict[str, Any], ttft_samples_s: dict[str, dict[str, list[float]]], directory: Path
) -> list[Path]:
    """The charts the run has figures for: (a)'s TTFT per tier and policy, (b)'s shares."""
    paths = []
    if ttft_samples_s:
        paths.append(plot_ttft(ttft_samples_s, directory))
    if summary.get("fair") is not None:
        paths.append(plot_fair_share(summary["fair"], directory))
    return paths


def plot_ttft(ttft_samples_s: dict[str, dict[str, list[float]]], directory: Path) -> Path:
    """Box plots of each run's time to first token, one panel per tier: `ttft_samples_s` is
    run ("idle", then each policy) -> tier -> seconds."""
    plt = pyplot()
    tiers = list(dict.fromkeys(tier for by_tier in ttft_samples_s.values() for tier in by_tier))
    figure, panels = plt.subplots(1, len(tiers), figsize=(5 * len(tiers), 4.5), squeeze=False)
    for axes, tier in zip(panels[0], tiers):
        runs = [(run, by_tier[tier]) for run, by_tier in ttft_samples_s.items() if by_tier.get(tier)]
        axes.boxplot(
            [[seconds * 1000 for seconds in samples] for _, samples in runs],
            tick_labels=[run for run, _ in runs],
            whis=(1, 99),  # whiskers at p1 and p99: the tail the headline figures are about
            showfliers=False,
        )
        axes.set_yscale("log")
        axes.set_title(f"{tier} TTFT (whiskers p1 to p99)", fontsize=10)
        axes.set_ylabel("ms")
        axes.grid(True, axis="y", which="both", alpha=0.3)
    return save(figure, directory, SCHED_TTFT_PNG)


def plot_fair_share(fair: dict[str, Any], directory: Path) -> Path:
    """Each tenant's share of the tokens, second by second through the window, against its target."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(figsize=(7, 4))
    for tenant, shares in fair["share_by_second"].items():
        points = [math.nan if share is None else share for share in shares]  # None: no tokens that second
        line = axes.plot(range(1, len(points) + 1), points, marker=".", label=f"tenant {tenant}")[0]
        axes.axhline(fair["target_shares"][tenant], linestyle="--", color=line.get_color(), alpha=0.6)
    axes.set_ylim(0, 1)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("second of the counting window")
    axes.set_ylabel("share of the tokens (dashed: target)")
    axes.set_title("fair share: tokens per tenant, second by second", fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    return save(figure, directory, SCHED_FAIR_SHARE_PNG)
