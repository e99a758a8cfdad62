"""The human-readable tables `llmos bench sched` prints before its JSON line."""

from __future__ import annotations

from typing import Any

from llmos.cli import table
from llmos_bench.targets import target_lines


def format_report(summary: dict[str, Any]) -> str:
    lines: list[str] = []
    for part in (
        chat_lines(summary),
        fair_lines(summary),
        scale_lines(summary),
        decision_lines(summary),
        target_lines("targets (issue 5)", summary["targets"]),
        target_lines("targets (issue 20)", summary.get("scale_targets", {})),
    ):
        if part:
            lines += ["", *part] if lines else part
    return "\n".join(lines)


def chat_lines(summary: dict[str, Any]) -> list[str]:
    chat = summary["chat"]
    if chat is None:
        return []
    settings = summary["settings"]
    lines = [
        f"(a) interactive chat ({settings['interactive_rate']:g}/s) under a batch flood "
        f"({chat['batch_rate_per_s']:.1f}/s after a burst of {chat['batch_burst']}, "
        f"asking {settings['batch_load']:g}x the {chat['token_capacity_per_s']:.0f} tokens/s "
        f"of {settings['workers']} workers x {settings['slots']} slots; both kinds "
        f"{chat['load']:.2f}x, {chat['load_with_prefills']:.2f}x counting prefills), "
        f"{settings['duration_s']:g} s of arrivals"
    ]
    if settings["batch_declared_max_tokens"]:
        lines.append(
            f"batch requests ask for max_tokens {settings['batch_declared_max_tokens']}; "
            "their answers end before it (eos)"
        )
    headers = [
        "POLICY",
        "INT TTFT P50/P99 MS",
        "P99 VS IDLE",
        "P99 GAIN VS FCFS",
        "JCT MEAN S",
        "JCT GAIN",
        "BATCH MAX JCT S",
        "UNFINISHED",
        "TOK/S",
        "VS FCFS",
        "FALLBACKS",
    ]
    idle = chat["idle"]
    rows = [
        [
            "idle (interactive only)",
            ttft_pair(idle),
            "1.00x",
            "-",
            seconds(idle["jct_mean_s"]),
            "-",
            "-",
            "-",
            number(idle["tokens_per_s"]),
            "-",
            str(idle["scheduler_fallbacks"]),
        ]
    ]
    for policy, run in chat["policies"].items():
        rows.append(
            [
                policy,
                ttft_pair(run),
                times(run["ttft_p99_vs_idle"]),
                times(run["ttft_p99_gain_vs_fcfs"]),
                seconds(run["jct_mean_s"]),
                times(run["jct_gain_vs_fcfs"]),
                seconds(run["batch_max_jct_s"]),
                f"{run['batch_unfinished']}/{run['batch_requests']}",
                number(run["tokens_per_s"]),
                times(run["throughput_vs_fcfs"]),
                str(run["scheduler_fallbacks"]),
            ]
        )
    lines += table(headers, rows)
    classes = list(next(iter(chat["policies"].values()))["batch_jct_mean_by_length_s"])
    lines += [
        "",
        "batch JCT mean by answer length, s:",
        *table(
            ["POLICY", *(label.upper() for label in classes)],
            [
                [policy, *(seconds(run["batch_jct_mean_by_length_s"][label]) for label in classes)]
                for policy, run in chat["policies"].items()
            ],
        ),
    ]
    errors = {policy: run["errors"] for policy, run in chat["policies"].items() if run["errors"]}
    if errors:
        lines.append(f"errors: {errors}")
    return lines


def fair_lines(summary: dict[str, Any]) -> list[str]:
    fair = summary["fair"]
    if fair is None:
        return []
    headers = ["TENANT", "TOKENS", "SHARE", "TARGET", "SHARE, SECOND BY SECOND"]
    rows = [
        [
            tenant,
            str(fair["tokens"][tenant]),
            percent(fair["shares"][tenant]),
            percent(fair["target_shares"][tenant]),
            " to ".join(percent(share) for share in fair["share_1s_range"][tenant]),
        ]
        for tenant in fair["tokens"]
    ]
    return [
        f"(b) fair share, policy fair, {summary['settings']['fair_window_s']:g} s window: "
        f"ratio {number(fair['ratio'], 2)} against {fair['target_ratio']:g}, "
        f"error {percent(fair['fair_share_error'])}",
        *table(headers, rows),
    ]


def scale_lines(summary: dict[str, Any]) -> list[str]:
    scale = summary["scale"]
    if scale is None:
        return []
    settings = summary["settings"]
    lines = [
        f"(c) scale: {settings['scale_workers']} simulated workers, "
        f"{scale['completed']}/{scale['requested']} requests of "
        f"{settings['scale_max_tokens']} tokens in {scale['wall_s']:.1f} s, policy "
        f"{scale['policy']}{brokers_note(scale)}: {number(scale['requests_per_s'])} requests/s, "
        f"{number(scale['tokens_per_s'])} tokens/s",
        f"  TTFT p50/p99 {ms(scale['ttft_p50_s'])}/{ms(scale['ttft_p99_s'])} ms, "
        f"end to end p50/p99 {ms(scale['jct_p50_s'])}/{ms(scale['jct_p99_s'])} ms, "
        f"scheduler fallbacks {scale['scheduler_fallbacks']}, errors {scale['errors'] or 'none'}",
    ]
    plain = summary.get("scale_insecure")
    if plain is not None:
        lines.append(
            f"  with CURVE (the default) {number(scale['requests_per_s'])} requests/s against "
            f"{number(plain['requests_per_s'])} with --insecure in the same run: "
            f"curve_throughput_ratio {number(summary['curve_throughput_ratio'], 2)}"
        )
    if scale["cpu_s"]:
        headers = ["PROCESS", "CPU S", "CPU US/REQUEST", "CORES BUSY"]
        rows = [
            [
                name,
                f"{used:.1f}",
                number(scale["cpu_us_per_request"].get(name)),
                f"{used / scale['wall_s']:.2f}" if scale["wall_s"] else "-",
            ]
            for name, used in sorted(scale["cpu_s"].items(), key=lambda kv: -kv[1])
        ]
        lines += [
            f"  CPU while the requests ran ({scale['cpu_count']} cores here):",
            *("  " + line for line in table(headers, rows)),
        ]
    return lines


def decision_lines(summary: dict[str, Any]) -> list[str]:
    by_policy = summary["decision_by_policy"]
    workers = list(next(iter(by_policy.values())))
    headers = ["POLICY", *(f"{count} WORKERS US/REQ" for count in workers), "1000 VS 10"]
    rows = [
        [
            policy,
            *(f"{figures[count]:.2f}" for count in workers),
            times(figures[workers[-1]] / figures[workers[0]]),
        ]
        for policy, figures in by_policy.items()
    ]
    return [
        f"scheduler decision time per pending request, {summary['decision_pending']} pending "
        "per batch (linear growth would be 100x from 10 to 1000 workers)",
        *table(headers, rows),
    ]


def ttft_pair(run: dict[str, Any]) -> str:
    return f"{ms(run['interactive_ttft_p50_s'])}/{ms(run['interactive_ttft_p99_s'])}"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def brokers_note(scale: dict[str, Any]) -> str:
    """`, 4 brokers` where the run was sharded (older JSON lines have no count)."""
    num_brokers = scale.get("brokers", 1)
    return f", {num_brokers} brokers" if num_brokers > 1 else ""
