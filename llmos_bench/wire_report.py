"""The figures, the JSON summary and the table of `llmos bench wire`."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from llmos.cli import table
from llmos_bench.percentiles import percentile

if TYPE_CHECKING:
    from llmos_bench.wire import SideRecord, WireBenchConfig

TARGET_STACK_VS_ECHO = 2.0  # the issue's: one request through the broker within 2x a raw echo
SIDE_LABELS = {
    "stack": "stack: llmos.Client, max_tokens=1",
    "echo": "raw DEALER<->ROUTER echo",
    "echo_plain": "raw echo, no CURVE",
    "relay": "raw relay: ROUTER/ROUTER + worker",
}


def side_figures(record: SideRecord) -> dict[str, Any]:
    latencies_ms = [seconds * 1000 for seconds in record.latencies_s]
    count = len(latencies_ms)
    return {
        "requests": count,
        "finished": record.num_finished,
        "errors": record.errors,
        "p50_ms": percentile(latencies_ms, 50),
        "p99_ms": percentile(latencies_ms, 99),
        "mean_ms": sum(latencies_ms) / count if count else None,
        "round_p50_ms": [percentile([s * 1000 for s in one], 50) for one in record.round_latencies_s],
        "cpu_us_per_request": {name: seconds / count * 1e6 for name, seconds in record.cpu_s.items()}
        if count
        else {},
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def difference(minuend: float | None, subtrahend: float | None) -> float | None:
    return minuend - subtrahend if minuend is not None and subtrahend is not None else None


def summarize(
    config: WireBenchConfig,
    records: dict[str, SideRecord],
    envelope_bytes: int,
    message_bytes: int,
    machine: dict[str, Any],
) -> dict[str, Any]:
    sides = {name: side_figures(record) for name, record in records.items()}
    stack, echo, relay = sides["stack"], sides["echo"], sides["relay"]
    summary: dict[str, Any] = {
        "benchmark": "wire",
        "settings": {
            **asdict(config),
            "is_secure": not config.insecure,
            "envelope_bytes": envelope_bytes,
            "message_bytes": message_bytes,
        },
        "sides": sides,
        "requested": config.requests,
        "completed": stack["finished"],
        "broker_added_p50_ms": difference(stack["p50_ms"], echo["p50_ms"]),
        "broker_added_p99_ms": difference(stack["p99_ms"], echo["p99_ms"]),
        "broker_added_vs_relay_p50_ms": difference(stack["p50_ms"], relay["p50_ms"]),
        "broker_added_vs_relay_p99_ms": difference(stack["p99_ms"], relay["p99_ms"]),
        "stack_vs_echo_p50": ratio(stack["p50_ms"], echo["p50_ms"]),
        "stack_vs_echo_p99": ratio(stack["p99_ms"], echo["p99_ms"]),
        "stack_vs_relay_p50": ratio(stack["p50_ms"], relay["p50_ms"]),
        "stack_vs_relay_p99": ratio(stack["p99_ms"], relay["p99_ms"]),
        "curve_vs_plain_echo_p50": ratio(echo["p50_ms"], sides["echo_plain"]["p50_ms"]),
        "broker_cpu_us_per_request": stack["cpu_us_per_request"].get("broker"),
        "relay_cpu_us_per_request": relay["cpu_us_per_request"].get("relay"),
        "machine": machine,
    }
    summary["targets"] = {
        f"stack_{q}_at_most_{TARGET_STACK_VS_ECHO:g}x_echo": None
        if summary[f"stack_vs_echo_{q}"] is None
        else summary[f"stack_vs_echo_{q}"] <= TARGET_STACK_VS_ECHO
        for q in ("p50", "p99")
    }
    return summary


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def format_report(summary: dict[str, Any]) -> str:
    settings, machine = summary["settings"], summary["machine"]
    lines = [
        "",
        f"one request at a time, {settings['requests']} per side after {settings['warmup']} warm-up, "
        f"{settings['rounds']} rounds; {'CURVE' if settings['is_secure'] else 'plain TCP'}; "
        f"echo and relay messages of {settings['message_bytes']} bytes; "
        f"{machine['cpu']}, {machine['cpu_count']} cores",
        "",
    ]
    headers = ["SIDE", "DONE", "P50 MS", "P99 MS", "MEAN MS", "CPU US/REQ", "P50 PER ROUND"]
    rows = []
    for name, label in SIDE_LABELS.items():
        figures = summary["sides"][name]
        cpu_us = sum(figures["cpu_us_per_request"].values())
        rows.append(
            [
                label,
                f"{figures['finished']}/{figures['requests']}",
                ms(figures["p50_ms"]),
                ms(figures["p99_ms"]),
                ms(figures["mean_ms"]),
                f"{cpu_us:.0f}",
                " ".join(ms(value) for value in figures["round_p50_ms"]),
            ]
        )
    lines += table(headers, rows)
    broker_cpu = summary["broker_cpu_us_per_request"]
    lines += [
        "",
        f"broker adds {ms(summary['broker_added_p50_ms'])} ms at p50, {ms(summary['broker_added_p99_ms'])} "
        f"ms at p99 over the echo; {ms(summary['broker_added_vs_relay_p50_ms'])} / "
        f"{ms(summary['broker_added_vs_relay_p99_ms'])} ms over the relay",
        f"stack / echo: {times(summary['stack_vs_echo_p50'])} p50, {times(summary['stack_vs_echo_p99'])} p99 "
        f"(target <= {TARGET_STACK_VS_ECHO:g}x); stack / relay: {times(summary['stack_vs_relay_p50'])} p50, "
        f"{times(summary['stack_vs_relay_p99'])} p99; CURVE echo / plain echo: "
        f"{times(summary['curve_vs_plain_echo_p50'])} p50",
        "broker CPU per request: " + ("-" if broker_cpu is None else f"{broker_cpu:.0f} us"),
    ]
    return "\n".join(lines)
