"""The figure: each company's rolling sentiment index over the days of the stream,
the alert band, and a marker where an alert fired."""

from __future__ import annotations

from pathlib import Path

from examples.sentiment_monitor.monitor import SentimentMonitor


def write_plot(monitor: SentimentMonitor, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # a file, no display
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(10, 5))
    colours = {}
    for company, history in sorted(monitor.indices.items()):
        days, indices = zip(*history)
        (line,) = axes.plot(days, indices, label=company, linewidth=1.6)
        colours[company] = line.get_color()
    for alert in monitor.alerts:
        marker = "^" if alert.direction == "positive" else "v"
        axes.scatter([alert.day], [alert.index], marker=marker, s=70, color=colours[alert.company], zorder=3)
    for level in (monitor.threshold, -monitor.threshold):
        axes.axhline(level, color="grey", linestyle="--", linewidth=0.8)
    axes.axhline(0.0, color="black", linewidth=0.5)
    axes.set_ylim(-1.05, 1.05)
    axes.set_xlabel("day of the news stream (one headline per company per day)")
    axes.set_ylabel(f"sentiment index (mean of last {monitor.window})")
    axes.set_title("Rolling sentiment per company; ▲/▼ = alert, dashed = threshold")
    axes.legend(loc="lower left", fontsize=8, ncol=2)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
