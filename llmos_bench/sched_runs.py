"""The measured runs of `llmos bench sched`: (a) chat under a batch flood, (b) fair
share, (c) scale. Each returns plain figures; `llmos_bench.sched` assembles the JSON line."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmos_bench.driver import ClosedLoop, LoadDriver, RunResult
from llmos_bench.load_processes import ClosedLoad, run_closed_loops, totals
from llmos_bench.percentiles import percentile
from llmos_bench.sched_config import BASELINE, TENANT_WEIGHTS, SchedBenchConfig, weights_spec
from llmos_bench.stack import SimStack
from llmos_bench.workload import (
    BATCH,
    INTERACTIVE,
    STANDARD,
    BatchFlood,
    ChatWorkload,
    Job,
    bounded_pareto_mean,
    tenant_jobs,
)
from scheduler_svc.policy_base import PolicyName
from workers.sim import CHARS_PER_TOKEN

WARM_UP_TOKENS = 4
SCALE_CLIENT_START_S = 3.0  # the load processes import and connect, then all start at once
# batch answers by length, for the JCT each policy gives short and long jobs
BATCH_LENGTH_CLASSES = {"short (<=16)": (0, 16), "medium (17-64)": (17, 64), "long (>64)": (65, 1 << 31)}

Echo = Callable[[str], None]
TTFT_SAMPLES_KEY = "ttft_samples_s"


def warm_up(stack: SimStack) -> None:
    """One short request per slot through every process, so no measured run pays for
    first calls (connections, imports, the kernel's first view)."""
    for shard in stack.shards:
        num_slots = stack.workers_of(shard) * stack.max_num_seqs
        jobs = [Job(INTERACTIVE, INTERACTIVE, "warm up " * 8, WARM_UP_TOKENS)] * num_slots
        with LoadDriver(shard.client_address) as driver:
            driver.run([], [ClosedLoop(iter(jobs), num_slots)], drain_timeout_s=30)
    stack.wait_drained()


# ---------------------------------------------------------------- (a) chat under a batch flood


def token_capacity_per_s(config: SchedBenchConfig) -> float:
    """Tokens per second the simulated workers make with every slot busy (prefill aside)."""
    step_s = config.profile().step_s(config.slots, 0, 0)
    return config.workers * config.slots / step_s


def chat_workloads(config: SchedBenchConfig) -> tuple[ChatWorkload, BatchFlood]:
    """The interactive arrivals, and a batch rate whose tokens asked for come to
    `batch_load` times the workers' capacity: at 1 the flood alone saturates every
    worker, as the issue asks, and the interactive arrivals come on top."""
    chat = ChatWorkload(rate_per_s=config.interactive_rate, duration_s=config.duration_s)
    mean_tokens = bounded_pareto_mean(
        config.batch_pareto_alpha, config.batch_min_tokens, config.batch_max_tokens
    )
    batch_rate = config.batch_load * token_capacity_per_s(config) / mean_tokens
    flood = BatchFlood(
        burst=config.workers * config.slots,
        rate_per_s=batch_rate,
        duration_s=config.duration_s,
        pareto_alpha=config.batch_pareto_alpha,
        min_tokens=config.batch_min_tokens,
        max_tokens=config.batch_max_tokens,
        declared_max_tokens=config.batch_declared_max_tokens,
    )
    return chat, flood


def offered_load(
    config: SchedBenchConfig, chat: ChatWorkload, flood: BatchFlood, *, counting_prefills: bool
) -> float:
    """The tokens both kinds ask for, as a multiple of the workers' capacity.

    Counting prefills, it is the load the workers really see: a prompt's prefill
    lengthens one step of its worker and so holds back every request there, so each
    request costs its answer's tokens plus the slot-tokens its prefill stalls (slots
    x its prefill time / a full decode step). With a profile whose prefills are dear
    against its step, that is well above the nominal load."""
    profile = config.profile()
    step_s = profile.step_s(config.slots, 0, 0)
    stall_per_prompt_char = (
        (config.slots * profile.per_prefill_token_ms / 1e3 / step_s / CHARS_PER_TOKEN)
        if counting_prefills
        else 0.0
    )
    interactive = chat.rate_per_s * (chat.mean_answer_tokens + stall_per_prompt_char * chat.mean_prompt_chars)
    batch = flood.rate_per_s * (
        bounded_pareto_mean(flood.pareto_alpha, flood.min_tokens, flood.max_tokens)
        + stall_per_prompt_char * flood.mean_prompt_chars
    )
    return (interactive + batch) / token_capacity_per_s(config)


def run_chat(config: SchedBenchConfig, stack: SimStack, echo: Echo) -> dict[str, Any]:
    chat, flood = chat_workloads(config)
    interactive_jobs = chat.jobs(config.seed)
    batch_jobs = flood.jobs(config.seed)
    echo(
        f"(a) idle: {len(interactive_jobs)} interactive requests over {config.duration_s:g} s, "
        f"policy {config.headline_policy} ..."
    )
    idle, idle_ttfts = measure_chat_run(config, stack, config.headline_policy, interactive_jobs)
    runs, ttft_samples_s = {}, {"idle": idle_ttfts}
    for policy in config.policy_names:
        echo(
            f"(a) {policy}: {len(interactive_jobs)} interactive + {len(batch_jobs)} batch "
            f"requests ({flood.rate_per_s:.1f}/s after a burst of {flood.burst}) ..."
        )
        runs[policy], ttft_samples_s[policy] = measure_chat_run(
            config, stack, policy, interactive_jobs + batch_jobs
        )
    return {
        # every request's TTFT, for `--plot`'s charts; `llmos_bench.sched` takes it out
        # before the JSON line, which keeps the percentiles only
        TTFT_SAMPLES_KEY: ttft_samples_s,
        "idle": idle,
        "policies": runs,
        "batch_rate_per_s": flood.rate_per_s,
        "batch_burst": flood.burst,
        "num_batch_jobs": len(batch_jobs),
        "token_capacity_per_s": token_capacity_per_s(config),
        "load": offered_load(config, chat, flood, counting_prefills=False),
        "load_with_prefills": offered_load(config, chat, flood, counting_prefills=True),
    }


def measure_chat_run(
    config: SchedBenchConfig, stack: SimStack, policy: str, jobs: list
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """(the run's figures, each tier's TTFTs in seconds)."""
    stack.set_policy(policy)
    fallbacks_before = stack.count_fallbacks()
    with LoadDriver(stack.broker_address) as driver:
        result = driver.run(jobs, window_s=config.duration_s, drain_timeout_s=config.drain_timeout_s)
    is_drained = stack.wait_drained()
    figures = chat_figures(result)
    figures.update(
        policy=policy, scheduler_fallbacks=stack.count_fallbacks() - fallbacks_before, is_drained=is_drained
    )
    return figures, ttft_samples_s(result)


def ttft_samples_s(result: RunResult) -> dict[str, list[float]]:
    """Each tier's times to first token, of the requests that got one."""
    return {
        tier: [o.ttft_s for o in result.of(tier) if math.isfinite(o.ttft_s)]
        for tier in (INTERACTIVE, BATCH)
        if result.of(tier)
    }


def chat_figures(result: RunResult) -> dict[str, Any]:
    interactive, batch = result.of(INTERACTIVE), result.of(BATCH)

    def jct_s(outcome) -> float:  # one that never finished counts until the run ended
        return outcome.jct_s if outcome.is_done else result.ended_s - outcome.arrival_s

    every = interactive + batch
    batch_waits = [o.first_token_s - o.arrival_s for o in batch]
    return {
        "interactive_requests": len(interactive),
        "interactive_ttft_p50_s": percentile((o.ttft_s for o in interactive), 50),
        "interactive_ttft_p99_s": percentile((o.ttft_s for o in interactive), 99),
        "interactive_jct_mean_s": mean(jct_s(o) for o in interactive),
        "batch_requests": len(batch),
        "batch_unfinished": sum(not o.is_done for o in batch),
        "batch_jct_mean_s": mean(jct_s(o) for o in batch),
        "batch_jct_mean_by_length_s": {
            label: mean(jct_s(o) for o in batch if low <= o.answer_length <= high)
            for label, (low, high) in BATCH_LENGTH_CLASSES.items()
        },
        "batch_max_jct_s": max((jct_s(o) for o in batch), default=None),
        "batch_max_ttft_s": max((w for w in batch_waits if math.isfinite(w)), default=None),
        "jct_mean_s": mean(jct_s(o) for o in every),
        "tokens_per_s": result.tokens_in_window() / result.window_s if result.window_s else None,
        "window_s": result.window_s,
        "errors": error_counts(every),
        "max_send_lag_s": result.max_send_lag_s,
    }


def mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def error_counts(outcomes) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        if outcome.error:
            counts[outcome.error] = counts.get(outcome.error, 0) + 1
    return counts


# ---------------------------------------------------------------- (b) fair share


def run_fair(config: SchedBenchConfig, stack: SimStack, echo: Echo) -> dict[str, Any]:
    """Tenants A and B keep twice the stack's slots live each, in one tier, under `fair`."""
    echo(
        f"(b) fair: tenants {weights_spec()}, {config.fair_warmup_s:g} s warm-up, "
        f"{config.fair_window_s:g} s window ..."
    )
    stack.set_policy(BASELINE)  # through another policy: `fair` starts with fresh counters
    stack.set_policy(PolicyName.FAIR.value)
    fallbacks_before = stack.count_fallbacks()
    loops = [
        ClosedLoop(
            tenant_jobs(tenant, STANDARD, config.fair_max_tokens, config.seed), num_live=2 * stack.num_slots
        )
        for tenant in TENANT_WEIGHTS
    ]
    with LoadDriver(stack.broker_address) as driver:
        result = driver.run(
            [],
            loops,
            window_s=config.fair_warmup_s + config.fair_window_s,
            drain_timeout_s=config.drain_timeout_s,
        )
    is_drained = stack.wait_drained()
    window_start_s = result.started_s + config.fair_warmup_s
    window_end_s = result.started_s + result.window_s
    tokens = tenant_tokens(result, window_start_s, window_end_s)
    total = sum(tokens.values())
    (low, low_weight), (high, high_weight) = sorted(TENANT_WEIGHTS.items(), key=lambda kv: kv[1])
    target_ratio = high_weight / low_weight
    ratio = tokens[high] / tokens[low] if tokens[low] else None
    # the shares second by second: how far they swing inside the window
    by_second = [
        tenant_tokens(result, start_s, start_s + 1.0)
        for start_s in range_s(window_start_s, window_end_s - 1.0, step_s=1.0)
    ]
    share_by_second = {
        tenant: [
            second[tenant] / sum(second.values()) if sum(second.values()) else None for second in by_second
        ]
        for tenant in TENANT_WEIGHTS
    }
    shares_1s = {
        tenant: [share for share in shares if share is not None] for tenant, shares in share_by_second.items()
    }
    return {
        "tokens": tokens,
        "share_1s_range": {
            tenant: [min(shares, default=None), max(shares, default=None)]
            for tenant, shares in shares_1s.items()
        },
        "shares": {tenant: (count / total if total else None) for tenant, count in tokens.items()},
        # each tenant's share of each second's tokens through the window (None: no tokens)
        "share_by_second": share_by_second,
        "target_shares": {
            tenant: weight / sum(TENANT_WEIGHTS.values()) for tenant, weight in TENANT_WEIGHTS.items()
        },
        "ratio": ratio,
        "target_ratio": target_ratio,
        "fair_share_error": None if ratio is None else abs(ratio - target_ratio) / target_ratio,
        "tokens_per_s": total / (window_end_s - window_start_s) if total else None,
        "errors": error_counts(result.outcomes),
        "scheduler_fallbacks": stack.count_fallbacks() - fallbacks_before,
        "is_drained": is_drained,
    }


def tenant_tokens(result: RunResult, start_s: float, end_s: float) -> dict[str, int]:
    """Each tenant's tokens that arrived in (start_s, end_s]."""
    tokens = dict.fromkeys(TENANT_WEIGHTS, 0)
    for at_s, group, num_tokens in result.chunks:
        if group in tokens and start_s < at_s <= end_s:
            tokens[group] += num_tokens
    return tokens


def range_s(start_s: float, stop_s: float, step_s: float) -> list[float]:
    return [start_s + index * step_s for index in range(max(0, int((stop_s - start_s) / step_s) + 1))]


# ---------------------------------------------------------------- (c) scale


def run_scale(config: SchedBenchConfig, log_dir: Path, echo: Echo, is_secure: bool = True) -> dict[str, Any]:
    echo(
        f"(c) scale: {config.scale_workers} simulated workers, {config.scale_requests} requests "
        f"of {config.scale_max_tokens} tokens, {config.scale_in_flight} in flight from "
        f"{config.scale_clients} load processes, {'CURVE' if is_secure else '--insecure'}"
        f"{f', {config.scale_brokers} brokers' if config.scale_brokers > 1 else ''} ..."
    )
    with SimStack(
        log_dir,
        config.scale_workers,
        config.slots,
        config.profile(),
        policy=config.scale_policy,
        num_sim_processes=min(config.scale_sim_processes, config.scale_workers),
        is_secure=is_secure,
        broker_args=tuple(config.scale_broker_args.split()),
        num_brokers=config.scale_brokers,
    ) as stack:
        warm_up(stack)
        cpu_before = stack.cpu_seconds()
        clients = run_scale_clients(config, stack.broker_addresses)
        cpu_after = stack.cpu_seconds()
        fallbacks = stack.count_fallbacks()
    completed, wall_s, errors = totals(clients)
    cpu_s = {name: cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after}
    cpu_s["load"] = sum(client["cpu_s"] for client in clients)
    return {
        "requests_per_s": completed / wall_s if wall_s > 0 else None,
        "completed": completed,
        "requested": config.scale_requests,
        "wall_s": wall_s,
        "unfinished": sum(client["unfinished"] for client in clients),
        "errors": errors,
        "tokens_per_s": sum(client["tokens"] for client in clients) / wall_s if wall_s > 0 else None,
        "ttft_p50_s": max_of(clients, "ttft_p50_s"),
        "ttft_p99_s": max_of(clients, "ttft_p99_s"),
        "jct_p50_s": max_of(clients, "jct_p50_s"),
        "jct_p99_s": max_of(clients, "jct_p99_s"),
        "cpu_s": cpu_s,
        "cpu_us_per_request": {name: seconds / completed * 1e6 for name, seconds in cpu_s.items()}
        if completed
        else {},
        "scheduler_fallbacks": fallbacks,
        "policy": config.scale_policy,
        "brokers": config.scale_brokers,
        "is_secure": is_secure,
        "cpu_count": os.cpu_count(),
    }


def max_of(clients: list[dict[str, Any]], key: str) -> float | None:
    """The worst client's figure (each client's percentiles cover its own requests)."""
    values = [client[key] for client in clients if client[key] is not None]
    return max(values) if values else None


def run_scale_clients(config: SchedBenchConfig, addresses: list[str]) -> list[dict[str, Any]]:
    """The load processes (`python -m llmos_bench.driver`), each with its share of the
    requests and of the in-flight bound, process i aimed at broker i modulo their
    number; every one starts at the same instant."""
    load = ClosedLoad(
        config.scale_requests,
        config.scale_clients,
        config.scale_in_flight,
        config.scale_max_tokens,
        config.seed,
        config.drain_timeout_s,
    )
    targets = [{"address": address, "stream": config.scale_stream} for address in addresses]
    return run_closed_loops("llmos_bench.driver", targets, load, SCALE_CLIENT_START_S)
