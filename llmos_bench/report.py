"""The human-readable table `llmos bench engine` prints before its JSON line."""

from __future__ import annotations

from typing import Any

from llmos.cli import table
from llmos_bench.targets import target_lines

BASELINE_LABELS = {
    "sequential": "transformers generate, one at a time",
    "static_batch": "transformers generate, static batch",
    "generate_batch": "transformers generate_batch (CB)",
}


def format_report(summary: dict[str, Any]) -> str:
    settings = summary["settings"]
    lines = [
        f"model {summary['model']} ({summary['num_parameters'] / 1e6:.1f}M parameters) on "
        f"{summary['device']} [{summary['device_name']}], {summary['dtype']}, "
        f"{summary['threads']} threads",
        f"prompt {settings['prompt_len']} tokens, {settings['new_tokens']} new tokens per request; "
        f"matmul peak {summary['peak_flops_per_s'] / 1e9:.1f} GFLOP/s",
        *small_linear_lines(summary.get("small_linear_rows")),
        "",
    ]
    headers = ["RUN", "CONC", "REQS", "OUT TOK/S", "TTFT P50/P99 MS", "TPOT P50/P99 MS", "% PEAK"]
    rows = [
        [
            f"llmos {summary['engine']}",
            str(run["concurrency"]),
            str(run["requests"]),
            f"{run['output_tokens_per_s']:.1f}",
            pair_ms(run, "ttft"),
            pair_ms(run, "tpot"),
            percent(run["peak_fraction"]),
        ]
        for run in summary["llmos"]
    ]
    for name, label in BASELINE_LABELS.items():
        run = summary["baselines"][name]
        concurrency = "1" if name == "sequential" else str(summary["compare_concurrency"])
        rows.append(
            [label, concurrency, "-", "not run", "-", "-", "-"]
            if run is None
            else [
                label,
                concurrency,
                str(run["requests"]),
                f"{run['output_tokens_per_s']:.1f}",
                "-",
                "-",
                percent(run["peak_fraction"]),
            ]
        )
    lines += table(headers, rows)
    lines += poisson_lines(summary["poisson"])
    if summary.get("poisson_prefix_cache_off") is not None:
        off = summary["poisson_prefix_cache_off"]
        gain = summary.get("prefix_cache_ttft_p50_gain")
        lines += [
            f"  the same arrivals, prefix cache off: TTFT p50/p99 {pair_ms(off, 'ttft')} ms"
            + ("" if gain is None else f" (prefix cache: {gain:.2f}x faster first tokens)")
        ]
    lines += [
        "",
        f"llmos at {summary['compare_concurrency']} concurrent: "
        + ", ".join(
            f"{ratio(summary[key])} {label}"
            for key, label in [
                ("speedup_vs_sequential", "sequential generate"),
                ("speedup_vs_static_batch", "static batch"),
                ("speedup_vs_generate_batch", "generate_batch"),
            ]
        )
        + f"; {percent(summary['peak_fraction'])} of the matmul peak",
    ]
    lines += kv_lines(summary)
    lines += stack_lines(summary.get("stack"))
    lines += churn_lines(summary.get("churn"))
    lines += peer_lines(summary)
    if summary.get("rounds", 0) > 1:
        lines.append(
            f"medians of {summary['rounds']} rounds; each round's ratio: "
            + ", ".join(
                f"vs {name} " + " ".join("-" if v is None else f"{v:.2f}x" for v in values)
                for name, values in summary["round_speedups"].items()
            )
        )
    return "\n".join(lines)


def small_linear_lines(choice: dict[str, Any] | None) -> list[str]:
    if choice is None:
        return []
    line = f"float32 products of 1 to {choice['rows']} rows in small_linear ({choice['how']}"
    if choice["timings"]:
        line += "; small_linear/oneDNN " + ", ".join(
            f"{t['rows']} rows {t['small_linear_ms']:.1f}/{t['onednn_ms']:.1f} ms" for t in choice["timings"]
        )
    return [line + ")"]


def stack_lines(stack: dict[str, Any] | None) -> list[str]:
    if stack is None:
        return []
    return [
        "",
        f"{stack['requests']} requests (answers of {stack['mean_answer_tokens']:.0f} "
        f"tokens on average), {stack['max_num_seqs']} at once: "
        f"{stack['stack']['output_tokens_per_s']:.1f} output tokens/s through the stack, "
        f"{stack['alone']['output_tokens_per_s']:.1f} with the engine alone, "
        + ratio_with_rounds(stack["stack_vs_alone"], stack["round_ratios"]),
        burst_line(stack["burst"]),
        *(
            [
                "with CURVE (the default) against --insecure, the same requests: "
                + ratio_with_rounds(stack["curve_throughput_ratio"], stack["curve_round_ratios"])
            ]
            if stack.get("curve_throughput_ratio") is not None
            else []
        ),
    ]


def burst_line(burst: dict[str, Any]) -> str:
    alone, stack = burst["alone"], burst["stack"]
    return (
        f"a burst of {burst['requests']} requests at once ({burst['new_tokens']} tokens each): "
        f"first tokens at {stack['ttft_p50_ms']:.1f} ms (p50) / {stack['ttft_p99_ms']:.1f} ms (p99) "
        f"through the stack, {alone['ttft_p50_ms']:.1f} / {alone['ttft_p99_ms']:.1f} ms with the engine "
        f"alone: {burst['ttft_p50_stack_vs_alone']:.2f}x at p50 (medians of the rounds)"
    )


def churn_lines(churn: dict[str, Any] | None) -> list[str]:
    if churn is None:
        return []
    return [
        "",
        f"{churn['requests']} requests coming and going (answers of "
        f"{churn['mean_answer_tokens']:.0f} tokens on average), {churn['max_num_seqs']} at "
        f"once, the engine alone: {churn['mixed']['output_tokens_per_s']:.1f} output "
        f"tokens/s with mixed steps, {churn['apart']['output_tokens_per_s']:.1f} with "
        f"newcomers prefilled apart, " + ratio_with_rounds(churn["mixed_vs_apart"], churn["round_ratios"]),
    ]


def peer_lines(summary: dict[str, Any]) -> list[str]:
    """The llama.cpp comparison: one row per concurrency and configuration."""
    if summary.get("peer_skipped"):
        return ["", f"llama.cpp: not run ({summary['peer_skipped']})"]
    peer = summary.get("peer")
    if peer is None:
        return []
    headers = [
        "CONC",
        "LLAMA.CPP",
        "LLAMA.CPP TOK/S",
        "LLMOS TOK/S",
        "LLMOS/LLAMA.CPP",
        "RSS MB L.CPP/LLMOS",
        "L.CPP KV MB",
    ]
    rows = [
        [
            str(run["concurrency"]),
            run["config"].replace("flash auto", f"flash auto: {run['flash_attn_resolved']}"),
            f"{run['llama_cpp_tokens_per_s']:.1f}",
            f"{run['llmos_tokens_per_s']:.1f}",
            f"{run['speedup_vs_llama_cpp']:.2f}x",
            f"{run['llama_cpp_peak_rss_bytes'] / 2**20:.0f}/{run['llmos_peak_rss_bytes'] / 2**20:.0f} "
            f"(llmos {run['rss_vs_llama_cpp']:.2f}x)",
            "-" if run["kv_cache_mib"] is None else f"{run['kv_cache_mib']:.1f}",
        ]
        for run in peer["runs"]
    ]
    check = peer["f32_check"]
    return [
        "",
        f"llama.cpp {peer['version']} ({peer['threads']} threads) against llmos (KV in "
        f"{peer['llmos_kv_dtype']}), each run in a fresh process, medians of {peer['rounds']} rounds; "
        "RSS is each process's peak (VmHWM)",
        *table(headers, rows),
        "llama.cpp f32 against transformers: "
        + (
            "not checked (no f32 in --peer-dtypes)"
            if check is None
            else f"{check['matching_leading_tokens']} of the first {check['tokens']} greedy tokens equal "
            f"({check['config']})"
        ),
        *target_lines(f"targets against llama.cpp (llmos weights {peer['llmos_weights']})", peer["targets"]),
    ]


def ratio_with_rounds(ratio: float, round_ratios: list[float]) -> str:
    return f"{ratio:.2f}x (each round: " + " ".join(f"{value:.2f}x" for value in round_ratios) + ")"


def poisson_lines(poisson: dict[str, Any] | None) -> list[str]:
    if poisson is None:
        return []
    head = (
        f"Poisson arrivals at {poisson['rate_per_s']:.2f} requests/s "
        f"({poisson['load']:.0%} of capacity) for {poisson['seconds']:g} s: "
        f"{poisson['requests']} requests"
    )
    if not poisson["requests"]:
        return ["", head]
    return [
        "",
        head + f", {poisson['output_tokens_per_s']:.1f} output tokens/s",
        f"  TTFT p50/p99 {pair_ms(poisson, 'ttft')} ms, "
        f"TPOT p50/p99 {pair_ms(poisson, 'tpot')} ms, "
        f"end-to-end p50/p99 {pair_ms(poisson, 'e2e')} ms",
    ]


def pair_ms(figures: dict[str, Any], name: str) -> str:
    return "/".join(ms(figures.get(f"{name}_{q}_s")) for q in ("p50", "p99"))


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction * 100:.1f}%"


def ratio(value: float | None) -> str:
    return "n/a vs" if value is None else f"{value:.2f}x vs"


def kv_lines(summary: dict[str, Any]) -> list[str]:
    """The KV bytes the engine held per live token at each level, against the model's own."""
    per_token = summary.get("kv_bytes_per_token")
    held = [(run["concurrency"], run.get("kv_bytes_per_live_token")) for run in summary["llmos"]]
    held = [(concurrency, num_bytes) for concurrency, num_bytes in held if num_bytes]
    if not per_token or not held:
        return []
    levels = ", ".join(f"{num_bytes / per_token:.2f}x at {concurrency}" for concurrency, num_bytes in held)
    return [f"KV cache held per live token, against the model's {per_token / 1024:.0f} KiB a token: {levels}"]
