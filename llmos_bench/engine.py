"""`llmos bench engine`: the llmos engine against transformers, in one process.

One run loads one model, makes one set of prompts, and measures on them:
the matmul peak of the device; the llmos engine at each concurrency (closed
loop: as one request finishes the next starts); a Poisson-arrival run at a
fraction of the capacity the engine just showed; and the transformers
baselines (`generate` one request at a time, `generate` on one left-padded
static batch, and transformers' own continuous batching where installed).
The compared runs (llmos at the compared level and each baseline) take
`--rounds` turns, one after the other, and the medians make the ratios: a
machine that slows down for a while then slows both sides alike.
Every request makes exactly `--new-tokens` greedy tokens (EOS is ignored), so
every figure counts the same work. With `--stack-requests`, the same engine is
also measured behind the real stack (`llmos_bench.engine_stack`). It prints a
table, then one JSON line.
docs/benchmarks.md says what each figure means.
"""

from __future__ import annotations

import importlib
import json
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import torch

from llmos.config import option, options_from
from llmos.progress import StepProgress
from llmos_bench import baselines
from llmos_bench.engine_churn import measure_mixed_vs_apart
from llmos_bench.engine_stack import measure_stack_vs_alone
from llmos_bench.load import LoadResult, poisson_arrivals, run_closed_loop, run_open_loop
from llmos_bench.machine import cpu_model
from llmos_bench.peer import PEER_KEYS, check_peer, measure_peer
from llmos_bench.report import format_report
from llmos_bench.stats import count_parameters, latency_figures, matmul_peak_flops, median_run, model_flops
from workers.config import WorkerConfig
from workers.cpu_linears import check_cpu_weights
from workers.kv_dtype import KV_CACHE_DTYPES, check_engine_runs, resolve_kv_cache_dtype
from workers.model_loader import LoadedModel, kv_bytes_per_token, load_model, load_tokenizer
from workers.reference_engine import ReferenceEngine
from workers.small_linear_rows import RowsChoice

# --engine: the module and class of each llmos engine the bench measures
ENGINE_CLASSES = {
    "batched": ("workers.batched_engine", "BatchedEngine"),
    "paged": ("workers.paged_engine", "PagedEngine"),
}

COMPARE_CONCURRENCY = 32  # the level the speedups compare, and the static batch's size
BASELINES = ("sequential", "static_batch", "generate_batch")
WARM_UP_TOKENS = 2


@dataclass
class EngineBenchConfig:
    model: str = option(
        "dummy:llama-100m",
        "model directory, or dummy:<preset> for random weights (llama-tiny, llama-100m, llama-1b)",
    )
    device: str = option("auto", "torch device: auto (cuda if available, else cpu), cpu, cuda")
    dtype: str = option("auto", "auto (bfloat16 on cuda, float32 on cpu), float32, bfloat16")
    quantization: str = option("none", "none, or int8 (CPU only): int8 weights, as for llmos worker")
    cpu_weights: str = option("fast", "fast or compact: the CPU weight copies, as for llmos worker")
    kv_cache_dtype: str = option(
        "auto", "auto, float16 or bfloat16: the paged engine's KV cache dtype, as for llmos worker"
    )
    prompt_len: int = option(32, "prompt tokens per request")
    new_tokens: int = option(64, "tokens each request generates (EOS is ignored)")
    concurrency: str = option("1,8,32,64", "comma-separated engine concurrency levels")
    requests: int = option(0, "requests per level; 0 = the level's concurrency (one wave)")
    sequential_requests: int = option(4, "requests for the one-at-a-time generate baseline")
    poisson_seconds: float = option(10.0, "arrivals window of the Poisson run; 0 = no Poisson run")
    poisson_load: float = option(0.8, "Poisson arrival rate, as a fraction of measured capacity")
    shared_prefix_len: int = option(
        0,
        "Poisson run only: every prompt starts with the same this "
        "many tokens (a system prompt); the run is then repeated "
        "with the prefix cache off, at the same arrivals",
    )
    threads: int = option(0, "torch CPU threads; 0 = torch's default")
    engine: str = option(
        "auto",
        "the llmos engine measured, as a worker's --engine: auto (as a worker picks), "
        "batched (padded batch cache) or paged (paged KV cache)",
    )
    cuda_graphs: bool = option(
        False, "CUDA: the paged engine's decode steps as CUDA graphs, as for llmos worker"
    )
    block_size: int = option(16, "KV block size in tokens (batched and paged engines)")
    max_num_batched_tokens: int = option(2048, "tokens per engine step (batched and paged engines)")
    prefix_caching: bool = option(
        True,
        "the engine's prefix cache, as a worker runs it (the "
        "prompts share no prefix: it costs, never helps here)",
    )
    mixed_steps: bool = option(
        True,
        "the batched engine runs newcomers' prefill in the batch's decode "
        "forward, as a worker does (models that allow it)",
    )
    seed: int = option(0, "seed of the prompts and the arrivals")
    rounds: int = option(
        3,
        "rounds of the compared runs (llmos at the compared level, then each "
        "baseline), one after the other; the medians make the ratios, "
        "so a machine that slows down for a while skews no one side",
    )
    skip_baselines: bool = option(False, "measure the llmos engine only")
    stack_curve_baseline: bool = option(
        True, "with --stack-requests: also through an --insecure stack (curve_throughput_ratio)"
    )
    stack_requests: int = option(
        0,
        "also serve this many requests (answers of 1 to 2 x "
        "--new-tokens tokens) through a real stack (kernel, "
        "scheduler, broker, one worker process) and with the "
        "engine alone, at the compared concurrency; 0 = skip",
    )
    churn_requests: int = option(
        0,
        "also serve this many requests (answers of 1 to 2 x "
        "--new-tokens tokens) with the engine alone, with mixed steps "
        "and without, at the compared concurrency; 0 = skip",
    )
    peer: str = option(
        "",
        "also run the same work on this peer engine, round for round: llama.cpp "
        "(llmos[peer]); none by default",
    )
    peer_dtypes: str = option("f32,f16,q8_0", "with --peer: the GGUF weight types llama.cpp runs")
    peer_cache_dir: str = option(
        "", "with --peer: where GGUF files are kept; empty = ~/.cache/llmos/peer-gguf"
    )
    peer_llama_cpp_dir: str = option(
        "",
        "with --peer: a llama.cpp source tree, whose convert_hf_to_gguf.py converts "
        "a model not in the cache yet",
    )
    peer_omp_wait_policy: str = option(
        "",
        "with --peer: OMP_WAIT_POLICY of both sides' processes (OpenMP threads spin "
        "while they wait: 'passive' where other work shares the cores); empty = inherited",
    )
    json_only: bool = option(False, "print only the JSON line")
    plot: str = option("", "also draw PNG charts into this directory: output tokens/s against concurrency")
    write_profile: str = option(
        "",
        "also write a latency profile for simulated workers "
        "(llmos worker --engine sim --profile FILE) fitted from the runs",
    )

    def worker_config(self) -> WorkerConfig:
        """How a worker would load this bench's model (the peer's llmos processes too)."""
        return WorkerConfig(
            model=self.model,
            device=self.device,
            dtype=self.dtype,
            quantization=self.quantization,
            max_model_len=self.max_model_len,
            kv_cache_dtype=self.kv_cache_dtype,
        )

    def check(self) -> None:
        if self.prompt_len < 1 or self.new_tokens < 1:
            raise click.BadParameter("--prompt-len and --new-tokens must be at least 1")
        if not 0 < self.poisson_load:
            raise click.BadParameter("--poisson-load must be above 0")
        if self.shared_prefix_len < 0:
            raise click.BadParameter("--shared-prefix-len must be at least 0")
        if self.rounds < 1:
            raise click.BadParameter("--rounds must be at least 1")
        if self.stack_requests < 0 or self.churn_requests < 0:
            raise click.BadParameter("--stack-requests and --churn-requests must be at least 0")
        if self.engine not in {"auto", *ENGINE_CLASSES}:
            raise click.BadParameter(f"use one of auto, {', '.join(ENGINE_CLASSES)}", param_hint="--engine")
        _ = self.concurrency_levels  # raises on a bad list
        check_peer(self.peer, self.peer_dtypes)
        try:
            check_cpu_weights(self.cpu_weights)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--cpu-weights") from None
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise click.BadParameter(
                f"use one of {', '.join(KV_CACHE_DTYPES)}", param_hint="--kv-cache-dtype"
            )

    @property
    def concurrency_levels(self) -> list[int]:
        levels = sorted({int(level) for level in self.concurrency.split(",") if level.strip()})
        if not levels or levels[0] < 1:
            raise click.BadParameter(
                f"need levels >= 1, got {self.concurrency!r}", param_hint="--concurrency"
            )
        return levels

    @property
    def num_steps(self) -> int:
        """About the progress lines a run prints (the bar is clamped to it): the model,
        each level, the Poisson runs, the rounds, the stack's and the churn's lines."""
        poisson = (self.poisson_seconds > 0) * (1 + bool(self.shared_prefix_len))
        rounds = 0 if self.skip_baselines else self.rounds
        stack = (2 + self.stack_curve_baseline) * self.rounds if self.stack_requests else 0
        churn = 2 * self.rounds if self.churn_requests else 0
        peer = (1 + len(self.concurrency_levels) * self.rounds) if self.peer else 0
        levels = len(self.concurrency_levels)
        return 1 + levels + poisson + rounds + bool(self.write_profile) + stack + churn + peer

    @property
    def max_model_len(self) -> int:
        return self.shared_prefix_len + self.prompt_len + self.new_tokens

    @property
    def compare_concurrency(self) -> int:
        levels = self.concurrency_levels
        return COMPARE_CONCURRENCY if COMPARE_CONCURRENCY in levels else levels[-1]


@click.command("engine")
@options_from(EngineBenchConfig)
def engine(**kwargs: Any) -> None:
    """Measure the llmos engine against transformers on one model, in one process."""
    config = EngineBenchConfig(**kwargs)
    config.check()
    echo = (lambda _: None) if config.json_only else click.echo
    with StepProgress("llmos bench engine", config.num_steps, echo) as progress:
        summary = run_bench(config, echo=progress)
    if config.plot:
        from llmos_bench.plots import plot_engine

        for path in plot_engine(summary, Path(config.plot)):
            click.echo(f"wrote {path}", err=True)
    if not config.json_only:
        click.echo(format_report(summary))
    click.echo(json.dumps(summary))


def run_bench(config: EngineBenchConfig, echo: Callable[[str], None] = click.echo) -> dict[str, Any]:
    """Every measurement, as the dict the JSON line prints; `echo` gets progress lines."""
    config.check()
    levels = config.concurrency_levels
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    loaded = load_model(config.worker_config())
    tokenizer = load_tokenizer(loaded.path)
    engine_name = resolve_engine(config.engine, loaded.model, config.max_model_len, config.cuda_graphs)
    try:
        check_engine_runs(engine_name, config.kv_cache_dtype, loaded.dtype)
        check_cuda_graphs(config.cuda_graphs, engine_name, loaded.device)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    engine_cls = engine_class(engine_name)
    echo(
        f"{config.model}: {count_parameters(loaded.model) / 1e6:.1f}M parameters on "
        f"{loaded.device} ({dtype_name(loaded.dtype)}, quantization {loaded.quantization}), "
        f"engine {engine_cls.__name__}"
    )
    peak_flops = matmul_peak_flops(loaded.device, loaded.dtype)
    bench = EngineBench(config, loaded, tokenizer, engine_cls, peak_flops)
    bench.warm_up()
    runs = {}
    for concurrency in levels:
        echo(f"llmos engine, {concurrency} concurrent ...")
        runs[concurrency] = bench.measure_level(concurrency)
    capacity_rps = runs[config.compare_concurrency]["output_tokens_per_s"] / config.new_tokens
    poisson = poisson_without_cache = None
    if config.poisson_seconds > 0:
        echo(f"Poisson arrivals at {config.poisson_load:.0%} of {capacity_rps:.2f} requests/s ...")
        poisson = bench.measure_poisson(config.poisson_load * capacity_rps, levels[-1])
        if config.shared_prefix_len and config.prefix_caching and engine_cls is not ReferenceEngine:
            echo("the same arrivals with the prefix cache off ...")
            poisson_without_cache = bench.measure_poisson(
                config.poisson_load * capacity_rps, levels[-1], prefix_caching=False
            )
    baseline_figures: dict[str, dict[str, Any] | None] = dict.fromkeys(BASELINES)
    rounds: list[dict[str, Any]] = []
    if not config.skip_baselines:
        rounds = measure_rounds(bench, runs[config.compare_concurrency], echo)
        runs[config.compare_concurrency] = median_run([r["llmos"] for r in rounds])
        baseline_figures = {name: median_run([r[name] for r in rounds]) for name in BASELINES}
    if config.write_profile:
        write_sim_profile(config, runs, echo)
    stack = measure_stack_vs_alone(bench, echo) if config.stack_requests else None
    churn = measure_mixed_vs_apart(bench, echo) if config.churn_requests else None
    peer = measure_peer(bench, echo) if config.peer else dict.fromkeys(PEER_KEYS)
    summary = summarize(config, bench, runs, poisson, baseline_figures, rounds)
    summary["mixed_vs_apart_throughput"] = churn and churn["mixed_vs_apart"]
    summary["churn"] = churn
    summary["stack_vs_engine_throughput"] = stack and stack["stack_vs_alone"]
    summary["curve_throughput_ratio"] = stack and stack["curve_throughput_ratio"]
    summary["stack"] = stack
    summary.update(peer)
    if poisson_without_cache is not None:
        summary["poisson_prefix_cache_off"] = poisson_without_cache
        summary["prefix_cache_ttft_p50_gain"] = ratio_of(poisson_without_cache, poisson, "ttft_p50_s")
    return summary


def measure_rounds(
    bench: EngineBench, first_run: dict[str, Any], echo: Callable[[str], None]
) -> list[dict[str, Any]]:
    """`--rounds` turns of llmos at the compared level (the first turn reuses `first_run`),
    each followed by the baselines: {"llmos": ..., "sequential": ..., ...} per round."""
    compared, num_rounds = bench.config.compare_concurrency, bench.config.rounds
    rounds = []
    for index in range(num_rounds):
        echo(
            f"round {index + 1} of {num_rounds}: llmos at {compared} concurrent, "
            "then the transformers baselines ..."
        )
        llmos = first_run if index == 0 else bench.measure_level(compared)
        rounds.append({"llmos": llmos, **bench.measure_baselines()})
    return rounds


def ratio_of(slower: dict[str, Any], faster: dict[str, Any], key: str) -> float | None:
    return slower[key] / faster[key] if slower.get(key) and faster.get(key) else None


def round_speedups(rounds: list[dict[str, Any]]) -> dict[str, list[float | None]]:
    """Each round's llmos-over-baseline ratio, per baseline (how much the ratio moved)."""
    return {
        name: [
            None if r[name] is None else r["llmos"]["output_tokens_per_s"] / r[name]["output_tokens_per_s"]
            for r in rounds
        ]
        for name in BASELINES
    }


def write_sim_profile(
    config: EngineBenchConfig, runs: dict[int, dict[str, Any]], echo: Callable[[str], None]
) -> None:
    from workers.sim import LatencyProfile

    alone = runs[min(runs)]
    profile = LatencyProfile.fit(
        {c: run["tpot_p50_s"] for c, run in runs.items()},
        alone["ttft_p50_s"],
        config.prompt_len,
        source=f"llmos bench engine --model {config.model}",
    )
    profile.save(config.write_profile)
    echo(f"wrote simulated-worker profile {config.write_profile}: {profile}")


def resolve_engine(name: str, model: Any, max_model_len: int, cuda_graphs: bool = False) -> str:
    """`auto` as a worker resolves it (`workers.engine_factory.paged_fits`, or paged for CUDA
    graphs); other names as they are."""
    if name != "auto":
        return name
    from workers.engine_factory import paged_fits

    return "paged" if cuda_graphs or paged_fits(model, max_model_len) else "batched"


def check_cuda_graphs(cuda_graphs: bool, engine_name: str, device: torch.device) -> None:
    if cuda_graphs and (engine_name != "paged" or device.type != "cuda"):
        raise ValueError(
            f"--cuda-graphs runs the paged engine on a CUDA device, "
            f"not the {engine_name} one on {device.type}"
        )


def engine_class(name: str = "batched") -> type:
    """The engine named (batched or paged) where it exists, else the reference Engine (said on stderr)."""
    module_name, class_name = ENGINE_CLASSES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        click.echo(
            f"note: {module_name} is not importable ({exc}); measuring the reference Engine instead",
            err=True,
        )
        return ReferenceEngine
    return getattr(module, class_name)


class EngineBench:
    """One model, one set of prompts, and the measurements made on them."""

    def __init__(
        self,
        config: EngineBenchConfig,
        loaded: LoadedModel,
        tokenizer: Any,
        engine_cls: type,
        peak_flops: float,
    ) -> None:
        self.config = config
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = tokenizer
        self.engine_cls = engine_cls
        self.peak_flops = peak_flops
        # the dtype the engine's KV cache holds (`--kv-cache-dtype`, resolved on the model)
        self.kv_dtype = resolve_kv_cache_dtype(config.kv_cache_dtype, loaded.dtype)
        # how many rows the engines' float32 products ran in `small_linear` (None: none)
        self.small_linear_rows: RowsChoice | None = None
        num_prompts = max(
            max(self.level_requests(c) for c in config.concurrency_levels),
            config.compare_concurrency,
            config.sequential_requests,
        )
        self.prompts = self.prompts_for(num_prompts, config.seed)

    def prompts_for(self, count: int, seed: int) -> list[list[int]]:
        return make_prompts(
            count,
            self.config.prompt_len,
            self.tokenizer,
            self.model.config.get_text_config().vocab_size,
            seed,
        )

    def level_requests(self, concurrency: int) -> int:
        return self.config.requests or concurrency

    def make_engine(
        self,
        max_num_seqs: int,
        prefix_caching: bool | None = None,
        max_model_len: int = 0,
        mixed_steps: bool | None = None,
    ) -> Any:
        max_model_len = max_model_len or self.config.max_model_len
        kwargs: dict[str, Any] = dict(
            max_num_seqs=max_num_seqs, max_model_len=max_model_len, eos_token_ids=set(), worker_id="bench"
        )  # no EOS: full length
        if self.engine_cls is not ReferenceEngine:
            kwargs.update(
                block_size=self.config.block_size,
                num_blocks=self.num_kv_blocks(max_num_seqs, max_model_len),
                max_num_batched_tokens=max(self.config.max_num_batched_tokens, self.config.prompt_len),
                prefix_caching=(self.config.prefix_caching if prefix_caching is None else prefix_caching),
                cpu_weights=self.config.cpu_weights,
            )
        if self.engine_cls.__name__ == "PagedEngine":
            kwargs["kv_cache_dtype"] = self.config.kv_cache_dtype
            kwargs["cuda_graphs"] = self.config.cuda_graphs
        if self.engine_cls.__name__ == "BatchedEngine":  # the paged engine's steps are always mixed
            kwargs["mixed_steps"] = self.config.mixed_steps if mixed_steps is None else mixed_steps
        engine = self.engine_cls(self.model, self.tokenizer, **kwargs)
        if hasattr(engine, "runner"):
            self.small_linear_rows = engine.runner.cpu_linears.small_linear_rows
        return engine

    def num_kv_blocks(self, max_num_seqs: int, max_model_len: int) -> int:
        """Enough blocks that no request is ever preempted, and room for a whole prompt."""
        return max_num_seqs * (math.ceil(max_model_len / self.config.block_size) + 1)

    def warm_up(self) -> None:
        """One short pass through each path, so no measurement pays for first calls."""
        prompts = self.prompts[:2]
        run_closed_loop(self.make_engine(2), prompts, 2, WARM_UP_TOKENS)
        if not self.config.skip_baselines:
            baselines.generate_static_batch(self.model, prompts, WARM_UP_TOKENS, self.pad_token_id)

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id or 0)

    def throughput(
        self, num_prompt_tokens: int, num_generated_tokens: int, wall_s: float
    ) -> dict[str, float]:
        flops_per_s = model_flops(self.model, num_prompt_tokens, num_generated_tokens) / wall_s
        return {
            "output_tokens": num_generated_tokens,
            "wall_s": wall_s,
            "output_tokens_per_s": num_generated_tokens / wall_s,
            "flops_per_s": flops_per_s,
            "peak_fraction": flops_per_s / self.peak_flops,
        }

    def load_figures(self, result: LoadResult, names: tuple[str, ...]) -> dict[str, Any]:
        return {
            "requests": len(result.timings),
            **self.throughput(result.num_prompt_tokens, result.num_generated_tokens, result.wall_s),
            **latency_figures(result.timings, names),
        }

    def measure_level(self, concurrency: int) -> dict[str, Any]:
        prompts = self.prompts[: self.level_requests(concurrency)]
        result = run_closed_loop(self.make_engine(concurrency), prompts, concurrency, self.config.new_tokens)
        return {
            "concurrency": concurrency,
            **self.load_figures(result, ("ttft", "tpot")),
            "kv_bytes_per_live_token": result.kv_bytes_per_live_token,
        }

    def measure_poisson(
        self, rate_per_s: float, max_num_seqs: int, prefix_caching: bool | None = None
    ) -> dict[str, Any]:
        offsets = poisson_arrivals(rate_per_s, self.config.poisson_seconds, self.config.seed)
        # fresh prompts (another seed): no prefix-cache hits from the earlier runs; with
        # --shared-prefix-len, every one starts with the same system prompt
        vocab_size = self.model.config.get_text_config().vocab_size
        prompts = self.prompts_for(len(offsets), self.config.seed + 1)
        if self.config.shared_prefix_len:
            shared = make_prompts(
                1, self.config.shared_prefix_len, self.tokenizer, vocab_size, self.config.seed + 2
            )[0]
            bos = 1 if self.tokenizer.bos_token_id is not None else 0
            prompts = [shared + prompt[bos:] for prompt in prompts]  # one BOS, at the start
        result = run_open_loop(
            self.make_engine(max_num_seqs, prefix_caching), prompts, offsets, self.config.new_tokens
        )
        figures = {
            "rate_per_s": rate_per_s,
            "load": self.config.poisson_load,
            "seconds": self.config.poisson_seconds,
            "max_num_seqs": max_num_seqs,
        }
        if result.timings:
            figures.update(self.load_figures(result, ("ttft", "tpot", "e2e")))
        else:
            figures["requests"] = 0
        return figures

    def measure_baselines(self) -> dict[str, dict[str, Any] | None]:
        new_tokens, pad = self.config.new_tokens, self.pad_token_id
        batch = self.prompts[: self.config.compare_concurrency]
        figures: dict[str, dict[str, Any] | None] = {}
        sequential = baselines.generate_sequential(
            self.model, self.prompts[: self.config.sequential_requests], new_tokens, pad
        )
        figures["sequential"] = self.baseline_figures(sequential)
        static = baselines.generate_static_batch(self.model, batch, new_tokens, pad)
        figures["static_batch"] = self.baseline_figures(static)
        figures["generate_batch"] = None
        if baselines.has_continuous_batching(self.model):
            try:  # last: it swaps the model's attention while it runs
                continuous = baselines.generate_continuous(self.model, batch, new_tokens)
                figures["generate_batch"] = self.baseline_figures(continuous)
            except Exception as exc:  # a baseline that cannot run here is missing, not fatal
                click.echo(f"note: transformers continuous batching failed: {exc}", err=True)
        return figures

    def baseline_figures(self, result: baselines.BaselineResult) -> dict[str, Any]:
        assert result.num_generated_tokens == result.num_requests * self.config.new_tokens
        return {
            "requests": result.num_requests,
            **self.throughput(result.num_prompt_tokens, result.num_generated_tokens, result.wall_s),
        }


def make_prompts(count: int, prompt_len: int, tokenizer: Any, vocab_size: int, seed: int) -> list[list[int]]:
    """`count` distinct prompts of `prompt_len` ids: BOS (if any) then seeded random
    ordinary tokens, so no two share more than BOS and prefix caching cannot help."""
    rng = random.Random(seed)
    special_ids = set(tokenizer.all_special_ids)
    ordinary_ids = [i for i in range(min(len(tokenizer), vocab_size)) if i not in special_ids]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return [bos + rng.choices(ordinary_ids, k=prompt_len - len(bos)) for _ in range(count)]


def summarize(
    config: EngineBenchConfig,
    bench: EngineBench,
    runs: dict[int, dict[str, Any]],
    poisson: dict[str, Any] | None,
    baseline_figures: dict[str, dict[str, Any] | None],
    rounds: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The JSON line: headline ratios first, then every raw figure."""
    compared = runs[config.compare_concurrency]

    def speedup(name: str) -> float | None:
        baseline = baseline_figures[name]
        return (
            None if baseline is None else (compared["output_tokens_per_s"] / baseline["output_tokens_per_s"])
        )

    loaded = bench.loaded
    return {
        "speedup_vs_sequential": speedup("sequential"),
        "speedup_vs_static_batch": speedup("static_batch"),
        "speedup_vs_generate_batch": speedup("generate_batch"),
        "peak_fraction": compared["peak_fraction"],
        "compare_concurrency": config.compare_concurrency,
        "model": config.model,
        "num_parameters": count_parameters(bench.model),
        "device": str(loaded.device),
        "device_name": device_name(loaded.device),
        "dtype": dtype_name(loaded.dtype),
        "quantization": loaded.quantization,
        "cpu_weights": config.cpu_weights,
        # the KV bytes a token needs (layers x K and V x KV heads x head size x dtype),
        # against which each level's kv_bytes_per_live_token shows what the padded cache holds
        "kv_cache_dtype": dtype_name(bench.kv_dtype),
        "kv_bytes_per_token": kv_bytes_per_token(bench.model.config, bench.kv_dtype),
        "threads": torch.get_num_threads(),
        "small_linear_rows": rows_summary(bench.small_linear_rows),
        "engine": bench.engine_cls.__name__,
        "peak_flops_per_s": bench.peak_flops,
        "settings": asdict(config),
        "llmos": [runs[concurrency] for concurrency in sorted(runs)],
        "poisson": poisson,
        "baselines": baseline_figures,
        "rounds": len(rounds or []),
        "round_speedups": round_speedups(rounds or []),
        "versions": {"torch": torch.__version__, "transformers": transformers_version()},
    }


def rows_summary(choice: RowsChoice | None) -> dict[str, Any] | None:
    if choice is None:
        return None
    timings = [
        {"rows": rows, "small_linear_ms": small, "onednn_ms": onednn}
        for rows, small, onednn in choice.timings
    ]
    return {"rows": choice.rows, "how": choice.how, "timings": timings}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def transformers_version() -> str:
    import transformers

    return transformers.__version__
