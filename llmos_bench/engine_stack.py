"""`llmos bench engine --stack-requests N`: the engine alone against the same engine
served by the whole stack, on the same requests.

Both sides serve N requests (the same prompts, and answer lengths drawn evenly
from 1 to 2 x `--new-tokens` - 1, so requests end at different steps and slots
free one at a time) with max_num_seqs = the compared concurrency:
- alone: the engine in this process, a waiting request put into the batch the
  instant one ends (`run_closed_loop`): the engine with nothing around it;
- stack: kernel, scheduler (fcfs), broker and one `llmos worker` process on the
  same model, device and engine settings, fed by a client that keeps twice
  max_num_seqs requests live, so the broker always has the next one queued.
The ratio of output tokens/s is what serving costs: messages, tokenizing, KV
accounting with the kernel, and every step a freed slot waits for its next request.
Each round then sends a burst: max_num_seqs fresh requests of BURST_NEW_TOKENS
tokens at once, to a fresh engine alone and to the idle stack; their time to the
first token on each side is what a burst of users waits for beyond the engine.
The worker's answers may end early at the model's EOS (random weights rarely
make one); tokens/s counts the tokens each side made.
"""

from __future__ import annotations

import random
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmos_bench.driver import ClosedLoop, LoadDriver, summarize_closed_loop
from llmos_bench.load import run_closed_loop
from llmos_bench.stack import ServiceStack
from llmos_bench.stats import compare_rounds
from llmos_bench.workload import BATCH, Job

WORKER_READY_TIMEOUT_S = 300.0  # a fresh process loads the model (and warms CUDA) first
WARM_UP_REQUESTS = 4
DRAIN_TIMEOUT_S = 600.0
BURST_NEW_TOKENS = 4  # a burst measures first tokens; a few more end it soon
BURST_SEED_OFFSET = 100  # the bursts' prompts: never the closed loop's, nor another round's


class ModelStack(ServiceStack):
    """Kernel, scheduler (fcfs), broker and one real `llmos worker` with `worker_args`,
    CURVE on every socket."""

    ready_timeout_s = WORKER_READY_TIMEOUT_S

    def __init__(
        self, log_dir: Path, max_num_seqs: int, worker_args: list[str], is_secure: bool = True
    ) -> None:
        super().__init__(log_dir, num_workers=1, is_secure=is_secure)  # secure: as `llmos up` runs
        self.max_num_seqs = max_num_seqs
        self.worker_args = worker_args

    def start_workers(self) -> None:
        self.start_process(
            "worker",
            "worker",
            "--worker-id",
            "bench-worker",
            "--max-num-seqs",
            str(self.max_num_seqs),
            *self.worker_args,
            *self.worker_links(),
        )


def answer_lengths(count: int, new_tokens: int, seed: int) -> list[int]:
    """Evenly from 1 to 2 x new_tokens - 1 (mean new_tokens), seeded."""
    rng = random.Random(f"stack-{seed}")
    return [rng.randint(1, max(1, 2 * new_tokens - 1)) for _ in range(count)]


def worker_args(config: Any, max_model_len: int, kv_tokens: int) -> list[str]:
    """The worker's flags for the engine the bench builds in-process (`ModelStack` adds
    `--max-num-seqs`)."""
    return [
        "--model",
        config.model,
        "--device",
        config.device,
        "--dtype",
        config.dtype,
        "--quantization",
        config.quantization,
        "--cpu-weights",
        config.cpu_weights,
        "--kv-cache-dtype",
        config.kv_cache_dtype,
        "--threads",
        str(config.threads),
        "--max-model-len",
        str(max_model_len),
        "--kv-cache-tokens",
        str(kv_tokens),
        "--max-num-batched-tokens",
        str(max(config.max_num_batched_tokens, config.prompt_len)),
        "--prefix-caching" if config.prefix_caching else "--no-prefix-caching",
        "--mixed-steps" if config.mixed_steps else "--no-mixed-steps",
        "--cuda-graphs" if config.cuda_graphs else "--no-cuda-graphs",
    ]


def measure_stack_vs_alone(bench: Any, echo: Callable[[str], None]) -> dict[str, Any]:
    """`--rounds` turns of (alone, stack) on the same requests; medians make the ratio."""
    config = bench.config
    max_num_seqs = config.compare_concurrency
    lengths = answer_lengths(config.stack_requests, config.new_tokens, config.seed)
    texts, prompts = worker_prompts(bench, config.stack_requests, config.seed + 3)
    burst_prompts = [
        worker_prompts(bench, max_num_seqs, config.seed + BURST_SEED_OFFSET + index)
        for index in range(config.rounds)
    ]
    every_prompt = prompts + [ids for _, round_prompts in burst_prompts for ids in round_prompts]
    max_model_len = max(map(len, every_prompt)) + max(*lengths, BURST_NEW_TOKENS)
    kv_tokens = bench.num_kv_blocks(max_num_seqs, max_model_len) * config.block_size
    rounds: list[dict[str, Any]] = []
    bursts: list[dict[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="llmos-bench-stack-") as log_dir:
        args = worker_args(config, max_model_len, kv_tokens)
        with ModelStack(Path(log_dir), max_num_seqs, args) as stack:
            serve(stack.broker_address, texts[:WARM_UP_REQUESTS], [2] * WARM_UP_REQUESTS, 2)
            for index in range(config.rounds):
                echo(
                    f"round {index + 1} of {config.rounds}: {len(prompts)} requests, "
                    f"{max_num_seqs} at once, the engine alone, then through the stack ..."
                )
                engine = bench.make_engine(max_num_seqs, max_model_len=max_model_len)
                alone = run_closed_loop(engine, prompts, max_num_seqs, lengths)
                served = serve(stack.broker_address, texts, lengths, 2 * max_num_seqs)
                rounds.append({"alone": bench.load_figures(alone, ()), "stack": served})
                echo(
                    f"  alone {rounds[-1]['alone']['output_tokens_per_s']:.1f} output tokens/s "
                    f"in {alone.wall_s:.1f} s, stack {served['output_tokens_per_s']:.1f} in "
                    f"{served['wall_s']:.1f} s"
                )
                bursts.append(
                    measure_burst(bench, stack.broker_address, max_model_len, *burst_prompts[index])
                )
                alone_ms, stack_ms = (bursts[-1][side]["ttft_p50_s"] * 1000 for side in ("alone", "stack"))
                echo(
                    f"  a burst of {max_num_seqs}: first tokens at {alone_ms:.1f} ms (median) alone, "
                    f"{stack_ms:.1f} ms through the stack"
                )
    compared = compare_rounds(rounds, "stack", "alone")
    curve = None
    if config.stack_curve_baseline:
        curve = measure_curve_cost(config, rounds, max_num_seqs, args, texts, lengths, echo)
    return {
        "curve_throughput_ratio": curve and curve["ratio"],
        "curve_round_ratios": curve and curve["round_ratios"],
        "requests": len(prompts),
        "max_num_seqs": max_num_seqs,
        "mean_answer_tokens": sum(lengths) / len(lengths),
        "stack_vs_alone": compared.pop("ratio"),
        **compared,
        "burst": summarize_bursts(bursts, max_num_seqs),
    }


def worker_prompts(bench: Any, count: int, seed: int) -> tuple[list[str], list[list[int]]]:
    """`count` prompts as text for the stack and as the ids the worker's tokenizer makes
    of that text for the engine alone, so both sides see the very same tokens."""
    texts = [bench.tokenizer.decode(ids, skip_special_tokens=True) for ids in bench.prompts_for(count, seed)]
    return texts, [bench.tokenizer.encode(text) for text in texts]


def measure_burst(
    bench: Any, address: str, max_model_len: int, texts: list[str], prompts: list[list[int]]
) -> dict[str, dict[str, float]]:
    """Fresh requests all at once: to a fresh engine alone, then to the idle stack;
    each side's TTFT p50 and p99 (s)."""
    size = len(prompts)
    engine = bench.make_engine(size, max_model_len=max_model_len)
    alone = run_closed_loop(engine, prompts, size, BURST_NEW_TOKENS)
    served = serve(address, texts, [BURST_NEW_TOKENS] * size, size)
    return {
        "alone": bench.load_figures(alone, ("ttft",)),
        "stack": {name: served[name] for name in ("ttft_p50_s", "ttft_p99_s")},
    }


def summarize_bursts(bursts: list[dict[str, dict[str, float]]], size: int) -> dict[str, Any]:
    """Each side's median over the rounds of its TTFT p50 and p99, in ms; the stack's
    median p50 over the engine's."""
    figures = {
        side: {
            f"ttft_{q}_ms": statistics.median(b[side][f"ttft_{q}_s"] for b in bursts) * 1000
            for q in ("p50", "p99")
        }
        for side in ("alone", "stack")
    }
    return {
        "requests": size,
        "new_tokens": BURST_NEW_TOKENS,
        **figures,
        "ttft_p50_stack_vs_alone": figures["stack"]["ttft_p50_ms"] / figures["alone"]["ttft_p50_ms"],
    }


def measure_curve_cost(
    config: Any,
    rounds: list[dict[str, Any]],
    max_num_seqs: int,
    args: list[str],
    texts: list[str],
    lengths: list[int],
    echo: Callable[[str], None],
) -> dict[str, Any]:
    """The same requests through a stack run --insecure, as many rounds: CURVE's cost is
    the secure stack's median output tokens/s over this one's."""
    with tempfile.TemporaryDirectory(prefix="llmos-bench-stack-") as log_dir:
        with ModelStack(Path(log_dir), max_num_seqs, args, is_secure=False) as stack:
            serve(stack.broker_address, texts[:WARM_UP_REQUESTS], [2] * WARM_UP_REQUESTS, 2)
            for index, secure_round in enumerate(rounds):
                echo(f"round {index + 1} of {len(rounds)}: the same requests through an --insecure stack ...")
                secure_round["stack_insecure"] = serve(stack.broker_address, texts, lengths, 2 * max_num_seqs)
    return compare_rounds(rounds, "stack", "stack_insecure")


def serve(address: str, texts: list[str], lengths: list[int], num_live: int) -> dict[str, Any]:
    """Send every request through the stack, `num_live` at a time; the client's figures."""
    jobs = (Job(BATCH, BATCH, text, length) for text, length in zip(texts, lengths))
    with LoadDriver(address, track_chunks=False) as driver:
        result = driver.run([], [ClosedLoop(jobs, num_live)], drain_timeout_s=DRAIN_TIMEOUT_S)
    summary = summarize_closed_loop(result)
    if summary["completed"] < summary["submitted"]:
        raise RuntimeError(
            f"{summary['submitted'] - summary['completed']} of "
            f"{summary['submitted']} requests failed through the stack: errors "
            f"{summary['errors']}, {summary['unfinished']} unfinished"
        )
    wall_s = summary["last_finish_s"] - summary["first_submit_s"]
    return {
        "requests": summary["completed"],
        "output_tokens": summary["tokens"],
        "wall_s": wall_s,
        "output_tokens_per_s": summary["tokens"] / wall_s,
        "ttft_p50_s": summary["ttft_p50_s"],
        "ttft_p99_s": summary["ttft_p99_s"],
    }
