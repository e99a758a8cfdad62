"""`llmos bench gateway`: what the OpenAI-compatible HTTP gateway adds, same stack, same run.

One stack (kernel, scheduler, broker, simulated workers, CURVE as `llmos up`
runs it) with `llmos gateway` in front of its broker, then:

  (a) latency: the same seeded requests one at a time, streamed, alternating
      between the ZeroMQ SDK (`llmos.Client`) and the gateway (`/v1/completions`,
      `stream: true`, through httpx), which goes first swapping every pair;
      TTFT and end-to-end p50/p99 of each, and what HTTP adds;
  (b) throughput: the scale workload (tiny requests, a closed loop with many in
      flight, from load processes) straight to the broker (`llmos_bench.driver`),
      then through the gateway (`llmos_bench.http_load`), both asking for whole
      answers (`is_final_only`, as the gateway does for a call that does not
      stream); requests/s of each and CPU microseconds the gateway spends per
      request.

It prints a table, then one JSON line. Nothing here asserts a time.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click

from llmos.client import Client
from llmos.config import option, options_from
from llmos.processes import free_port
from llmos_bench.load_processes import ClosedLoad, run_closed_loops, totals
from llmos_bench.percentiles import percentile
from llmos_bench.sched_runs import warm_up
from llmos_bench.stack import SIM_MODEL, SimStack, StackError
from llmos_bench.workload import make_prompt
from workers.sim import LatencyProfile

GATEWAY_READY_S = 60.0
CLIENT_START_S = 1.0  # load processes start together this long after being spawned


@dataclass
class GatewayBenchConfig:
    workers: int = option(8, "simulated workers")
    slots: int = option(32, "requests each simulated worker runs at once")
    step_base_ms: float = option(2.0, "simulated step time: fixed part, ms")
    step_per_seq_ms: float = option(0.05, "simulated step time: per running request, ms")
    max_tokens: int = option(8, "answer length of every request")
    latency_pairs: int = option(200, "(a) requests sent one at a time through each side")
    scale_requests: int = option(4000, "(b) requests through each side")
    scale_in_flight: int = option(128, "(b) requests in flight at once, across the load processes")
    scale_clients: int = option(2, "(b) load processes per side")
    insecure: bool = option(False, "run the stack --insecure (default: CURVE, as llmos up)")
    seed: int = option(0, "seed of the prompts")
    log_dir: str = option("", "keep the stack's logs here (default: a temporary folder)")
    json_only: bool = option(False, "print only the JSON line")

    def check(self) -> None:
        if self.latency_pairs < 1 or self.scale_requests < 1 or self.max_tokens < 1:
            raise click.BadParameter("need --latency-pairs, --scale-requests and --max-tokens >= 1")
        if self.scale_clients < 1 or self.scale_in_flight < self.scale_clients:
            raise click.BadParameter("need --scale-clients >= 1 and --scale-in-flight >= it")


@click.command("gateway")
@options_from(GatewayBenchConfig)
def gateway(**kwargs: Any) -> None:
    """Measure the HTTP gateway against the ZeroMQ SDK on one stack, in one run."""
    config = GatewayBenchConfig(**kwargs)
    config.check()
    try:
        import fastapi  # noqa: F401
        import httpx  # noqa: F401
    except ImportError as missing:
        raise click.ClickException(f"{missing.name} is missing: pip install 'llmos[gateway,bench]'") from None
    echo = (lambda _: None) if config.json_only else click.echo
    summary = run_bench(config, echo)
    if not config.json_only:
        click.echo(format_report(summary))
    click.echo(json.dumps(summary))


def run_bench(config: GatewayBenchConfig, echo: Any = click.echo) -> dict[str, Any]:
    log_dir = Path(config.log_dir) if config.log_dir else Path(tempfile.mkdtemp(prefix="llmos-gateway-"))
    profile = LatencyProfile(
        base_ms=config.step_base_ms, per_seq_ms=config.step_per_seq_ms, source="llmos bench gateway"
    )
    with SimStack(log_dir, config.workers, config.slots, profile, is_secure=not config.insecure) as stack:
        url = start_gateway(stack)
        warm_up(stack)
        echo(f"(a) latency: {config.latency_pairs} requests one at a time through each side ...")
        latency = measure_latency(config, stack, url)
        echo(f"(b) throughput: {config.scale_requests} requests, {config.scale_in_flight} in flight ...")
        # whole answers on both sides: the gateway asks for a non-streamed call's result only
        target = {"address": stack.broker_address, "stream": False}
        direct = run_side(config, stack, "llmos_bench.driver", target)
        echo("(b) throughput: the same through the gateway ...")
        http = run_side(config, stack, "llmos_bench.http_load", {"url": url})
    return {
        "bench": "gateway",
        "latency": latency,
        "added_ttft_p50_ms": latency["http"]["ttft_p50_ms"] - latency["sdk"]["ttft_p50_ms"],
        "added_ttft_p99_ms": latency["http"]["ttft_p99_ms"] - latency["sdk"]["ttft_p99_ms"],
        "throughput": {"zeromq": direct, "http": http},
        "http_requests_per_s": http["requests_per_s"],
        "zeromq_requests_per_s": direct["requests_per_s"],
        "http_throughput_ratio": ratio(http["requests_per_s"], direct["requests_per_s"]),
        "gateway_cpu_us_per_request": http["cpu_us_per_request"].get("gateway"),
        "config": asdict(config),
        "machine": {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()},
    }


def start_gateway(stack: SimStack) -> str:
    """`llmos gateway` in front of the stack's broker, with the stack's client keys; its URL once ready."""
    port = free_port()
    stack.start_process("gateway", "gateway", "--port", str(port), "--broker-address", stack.broker_address)
    url = f"http://127.0.0.1:{port}"
    deadline_s = time.monotonic() + GATEWAY_READY_S
    while time.monotonic() < deadline_s:
        stack.check_alive()
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=5) as answer:
                if answer.status == 200:
                    return url
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(0.2)
    raise StackError(f"the gateway was not ready within {GATEWAY_READY_S:g} s\n{stack.log_tails()}")


# ---------------------------------------------------------------- (a) latency


def measure_latency(config: GatewayBenchConfig, stack: SimStack, url: str) -> dict[str, dict[str, float]]:
    import random

    import httpx

    rng = random.Random(f"gateway-{config.seed}")
    prompts = [make_prompt(rng, 40) for _ in range(config.latency_pairs)]
    times: dict[str, list[tuple[float, float]]] = {"sdk": [], "http": []}
    with Client(stack.broker_address) as client, httpx.Client(timeout=60) as http:
        sides = {
            "sdk": lambda prompt: sdk_times(client, prompt, config.max_tokens),
            "http": lambda prompt: http_times(http, url, prompt, config.max_tokens),
        }
        for sdk_times_first, prompt in zip([True, False] * len(prompts), prompts, strict=False):
            order = ("sdk", "http") if sdk_times_first else ("http", "sdk")
            for side in order:
                times[side].append(sides[side](prompt))
    return {side: summarize_times(pairs) for side, pairs in times.items()}


def sdk_times(client: Client, prompt: str, max_tokens: int) -> tuple[float, float]:
    """(TTFT, end to end) of one streamed request through the ZeroMQ SDK, seconds."""
    start_s = time.perf_counter()
    request_id = client.submit(prompt, model=SIM_MODEL, max_tokens=max_tokens, tier="interactive")
    first_s = 0.0
    for chunk in client.stream(request_id):
        if chunk.text and not first_s:
            first_s = time.perf_counter()
    client.result(request_id)
    return first_s - start_s, time.perf_counter() - start_s


def http_times(http: Any, url: str, prompt: str, max_tokens: int) -> tuple[float, float]:
    """(TTFT, end to end) of one streamed completion through the gateway, seconds."""
    body = {
        "model": SIM_MODEL,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "stream": True,
        "tier": "interactive",
    }
    start_s = time.perf_counter()
    first_s = 0.0
    with http.stream("POST", f"{url}/v1/completions", json=body) as answer:
        answer.raise_for_status()
        for line in answer.iter_lines():
            if not first_s and line.startswith("data: {") and json.loads(line[6:])["choices"][0]["text"]:
                first_s = time.perf_counter()
    return first_s - start_s, time.perf_counter() - start_s


def summarize_times(pairs: list[tuple[float, float]]) -> dict[str, float]:
    ttft = [ttft_s * 1000 for ttft_s, _ in pairs]
    e2e = [e2e_s * 1000 for _, e2e_s in pairs]
    return {
        "ttft_p50_ms": percentile(ttft, 50) or 0.0,
        "ttft_p99_ms": percentile(ttft, 99) or 0.0,
        "e2e_p50_ms": percentile(e2e, 50) or 0.0,
        "e2e_p99_ms": percentile(e2e, 99) or 0.0,
    }


# ---------------------------------------------------------------- (b) throughput


def run_side(
    config: GatewayBenchConfig, stack: SimStack, module: str, target: dict[str, str]
) -> dict[str, Any]:
    """The scale workload from `config.scale_clients` processes of `module`; counts and CPU."""
    stack.wait_drained()
    load = ClosedLoad(
        config.scale_requests,
        config.scale_clients,
        config.scale_in_flight,
        config.max_tokens,
        config.seed,
        60.0,
    )
    cpu_before = stack.cpu_seconds()
    clients = run_closed_loops(module, [target], load, CLIENT_START_S)
    cpu_after = stack.cpu_seconds()
    completed, wall_s, errors = totals(clients)
    cpu_s = {name: cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after}
    return {
        "requests_per_s": completed / wall_s if wall_s > 0 else None,
        "completed": completed,
        "requested": config.scale_requests,
        "errors": errors,
        "wall_s": wall_s,
        "jct_p50_ms": milliseconds(max(client["jct_p50_s"] or 0.0 for client in clients)),
        "jct_p99_ms": milliseconds(max(client["jct_p99_s"] or 0.0 for client in clients)),
        "cpu_us_per_request": {name: seconds / completed * 1e6 for name, seconds in cpu_s.items()}
        if completed
        else {},
    }


def milliseconds(seconds: float) -> float:
    return seconds * 1000


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


# ---------------------------------------------------------------- report


def format_report(summary: dict[str, Any]) -> str:
    latency, throughput = summary["latency"], summary["throughput"]
    lines = [
        "",
        "(a) latency, one request at a time (ms)    TTFT p50   TTFT p99    e2e p50    e2e p99",
    ]
    for side, label in (("sdk", "ZeroMQ SDK"), ("http", "HTTP gateway (SSE)")):
        figures = latency[side]
        lines.append(
            f"  {label:<40}{figures['ttft_p50_ms']:>9.2f}  {figures['ttft_p99_ms']:>9.2f}  "
            f"{figures['e2e_p50_ms']:>9.2f}  {figures['e2e_p99_ms']:>9.2f}"
        )
    added_p50, added_p99 = summary["added_ttft_p50_ms"], summary["added_ttft_p99_ms"]
    lines.append(f"  added by HTTP: TTFT p50 {added_p50:+.2f} ms, p99 {added_p99:+.2f} ms")
    lines += ["", "(b) throughput, scale workload            requests/s   completed   errors   JCT p99 ms"]
    for side, label in (("zeromq", "ZeroMQ (raw wire)"), ("http", "HTTP gateway")):
        figures = throughput[side]
        rate = figures["requests_per_s"] or 0.0
        lines.append(
            f"  {label:<40}{rate:>10.0f}  {figures['completed']:>10}  {sum(figures['errors'].values()):>7}"
            f"  {figures['jct_p99_ms']:>11.1f}"
        )
    http_ratio = summary["http_throughput_ratio"]
    gateway_cpu = summary["gateway_cpu_us_per_request"]
    lines.append(
        f"  gateway / ZeroMQ: {http_ratio:.2f}x; gateway CPU {gateway_cpu:.0f} us per request"
        if http_ratio is not None and gateway_cpu is not None
        else "  gateway / ZeroMQ: no figure (nothing completed)"
    )
    return "\n".join(lines)
