"""`llmos bench engine --peer llama.cpp`: the same work on llama.cpp, run for run.

At each concurrency level, `--rounds` times: llmos (`llmos_bench.peer_llmos`),
then llama.cpp in each configuration (`llmos_bench.peer_llama_cpp`), each in a
fresh process of its own, on the same prompts, each request making exactly
`--new-tokens` greedy tokens; the medians of the rounds make the ratios. A
configuration is the GGUF weights' type (`--peer-dtypes`) with llama.cpp's
defaults (KV cache in f16, flash attention auto), plus f32 weights with the KV
cache in f32 and flash attention off: what llmos runs on CPU (KV in the
model's dtype, no flash kernel). Before the rounds, llama.cpp's f32 greedy
answer to one prompt is compared with transformers': a broken conversion
shows as a short run of equal tokens.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import torch

from llmos_bench.baselines import greedy_config
from llmos_bench.peer_gguf import OUTTYPES, default_cache_dir, ensure_gguf_files
from llmos_bench.peer_targets import llmos_weights, peer_targets

PEERS = ("llama.cpp",)
PEER_KEYS = ("peer", "peer_skipped", "peer_f32_matches_transformers_tokens")  # the JSON line's
CHECK_TOKENS = 16
NOT_INSTALLED = (
    "llama.cpp is not installed: pip install 'llmos[peer]' (builds from source, about 5 minutes; "
    "CMAKE_ARGS=-DGGML_NATIVE=ON for this CPU's instructions); measuring llmos without it"
)


@dataclass(frozen=True)
class PeerConfig:
    """One way of running llama.cpp."""

    weights: str  # the GGUF's type: f32, f16, q8_0
    kv_type: str = "f16"  # llama.cpp's default
    flash_attn: str = "auto"  # llama.cpp's default

    @property
    def label(self) -> str:
        if (self.kv_type, self.flash_attn) == ("f16", "auto"):
            return f"{self.weights} (defaults: KV f16, flash auto)"
        return f"{self.weights}, KV {self.kv_type}, flash {self.flash_attn}"


def parse_dtypes(text: str) -> list[str]:
    dtypes = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in dtypes if name not in OUTTYPES]
    if not dtypes or unknown:
        choices = ", ".join(OUTTYPES)
        raise click.BadParameter(f"choose from {choices}; got {text!r}", param_hint="--peer-dtypes")
    return list(dict.fromkeys(dtypes))


def check_peer(peer: str, dtypes: str) -> None:
    if peer and peer not in PEERS:
        raise click.BadParameter(f"choose from {', '.join(PEERS)}; got {peer!r}", param_hint="--peer")
    if peer:
        parse_dtypes(dtypes)


def peer_configs(dtypes: list[str]) -> list[PeerConfig]:
    configs = [PeerConfig(weights) for weights in dtypes]
    if "f32" in dtypes:
        configs.append(PeerConfig("f32", kv_type="f32", flash_attn="off"))
    return configs


def llama_cpp_version() -> str | None:
    """llama_cpp's version, or None where it cannot be imported."""
    try:
        import llama_cpp  # type: ignore[import-not-found]
    except (ImportError, OSError):  # OSError: the package is there, its shared library is not
        return None
    return str(llama_cpp.__version__)


def run_child(module: str, job: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """`python -m module` with `job` on stdin; its one JSON line back, and what llama.cpp's
    log (on stderr) says it chose."""
    done = subprocess.run(
        [sys.executable, "-m", module], input=json.dumps(job), capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        raise RuntimeError(f"{module} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, **llama_cpp_choices(done.stderr)}


def llama_cpp_choices(log: str) -> dict[str, Any]:
    """What `auto` became, and the KV cache llama.cpp made: it rounds each sequence's
    cells up to a multiple of 256, so its cache can be larger than the work needs."""
    # `auto` is settled when the graph is first built; a set value is printed as it is
    flash = re.search(r"Flash Attention (enabled|disabled)", log) or re.search(
        r"flash_attn += (enabled|disabled)", log
    )
    kv = re.search(r"llama_kv_cache: size = +([0-9.]+) MiB \( *(\d+) cells", log)
    return {
        "flash_attn_resolved": flash and flash.group(1),
        "kv_cache_mib": kv and float(kv.group(1)),
        "kv_cells_per_seq": kv and int(kv.group(2)),
    }


class PeerBench:
    """The peer comparison of one `llmos bench engine` run."""

    def __init__(self, bench: Any, echo: Callable[[str], None]) -> None:
        self.bench = bench
        self.config = bench.config
        self.echo = echo
        self.configs = peer_configs(parse_dtypes(self.config.peer_dtypes))
        self.threads = self.config.threads or os.cpu_count() or 1
        self.env = dict(os.environ)
        if self.config.peer_omp_wait_policy:  # both sides alike: torch and llama.cpp both use OpenMP
            self.env["OMP_WAIT_POLICY"] = self.config.peer_omp_wait_policy

    def gguf_paths(self) -> dict[str, Path]:
        config = self.config
        cache_dir = Path(config.peer_cache_dir).expanduser() if config.peer_cache_dir else default_cache_dir()
        return ensure_gguf_files(
            config.model,
            self.bench.tokenizer,
            sorted({c.weights for c in self.configs}),
            cache_dir,
            config.peer_llama_cpp_dir,
            self.echo,
        )

    def llama_cpp_job(self, config: PeerConfig, path: Path, concurrency: int, check_tokens: int = 0) -> dict:
        prompts = self.bench.prompts[: self.bench.level_requests(concurrency)]
        return {
            "gguf_path": str(path),
            "prompts": prompts,
            "concurrency": concurrency,
            "new_tokens": self.config.new_tokens,
            "threads": self.threads,
            "kv_type": config.kv_type,
            "flash_attn": config.flash_attn,
            "check_tokens": check_tokens,
        }

    def llmos_job(self, concurrency: int) -> dict:
        return {
            "settings": asdict(self.config),
            "concurrency": concurrency,
            "peak_flops": self.bench.peak_flops,
        }

    def transformers_tokens(self, prompt: list[int], count: int) -> list[int]:
        model = self.bench.model
        input_ids = torch.tensor([prompt], device=model.device)
        with torch.inference_mode():
            output = model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=greedy_config(count, self.bench.pad_token_id),
            )
        return [int(token) for token in output[0, len(prompt) :]]

    def check_f32(self, paths: dict[str, Path]) -> dict[str, Any] | None:
        """llama.cpp's f32 weights (KV f32, no flash) against transformers, on prompt 0."""
        strict = next((c for c in reversed(self.configs) if c.weights == "f32"), None)
        if strict is None:
            return None
        self.echo(f"llama.cpp {strict.label} against transformers, {CHECK_TOKENS} greedy tokens ...")
        job = self.llama_cpp_job(strict, paths["f32"], 1, check_tokens=CHECK_TOKENS)
        job["prompts"] = job["prompts"][:1]
        peer_ids = run_child("llmos_bench.peer_llama_cpp", job, self.env)["check_token_ids"]
        reference_ids = self.transformers_tokens(self.bench.prompts[0], CHECK_TOKENS)
        matches = next((i for i, (a, b) in enumerate(zip(peer_ids, reference_ids)) if a != b), CHECK_TOKENS)
        return {
            "config": strict.label,
            "tokens": CHECK_TOKENS,
            "matching_leading_tokens": matches,
            "llama_cpp_token_ids": peer_ids,
            "transformers_token_ids": reference_ids,
        }

    def measure_level(self, concurrency: int, paths: dict[str, Path]) -> list[dict[str, Any]]:
        """`--rounds` turns of llmos then every configuration; one row per configuration."""
        llmos_rounds: list[dict[str, Any]] = []
        peer_rounds: dict[PeerConfig, list[dict[str, Any]]] = {c: [] for c in self.configs}
        for index in range(self.config.rounds):
            self.echo(
                f"peer round {index + 1} of {self.config.rounds} at {concurrency} concurrent: "
                f"llmos, then llama.cpp {', '.join(c.label for c in self.configs)} ..."
            )
            llmos_rounds.append(run_child("llmos_bench.peer_llmos", self.llmos_job(concurrency), self.env))
            for config in self.configs:
                job = self.llama_cpp_job(config, paths[config.weights], concurrency)
                peer_rounds[config].append(run_child("llmos_bench.peer_llama_cpp", job, self.env))
        return [self.level_row(concurrency, c, llmos_rounds, peer_rounds[c]) for c in self.configs]

    def level_row(
        self,
        concurrency: int,
        config: PeerConfig,
        llmos_rounds: list[dict[str, Any]],
        peer_rounds: list[dict[str, Any]],
    ) -> dict[str, Any]:
        llmos_tps = median_of(llmos_rounds, "output_tokens_per_s")
        peer_tps = median_of(peer_rounds, "output_tokens_per_s")
        llmos_rss = median_of(llmos_rounds, "peak_rss_bytes")
        peer_rss = median_of(peer_rounds, "peak_rss_bytes")
        return {
            "concurrency": concurrency,
            "config": config.label,
            "weights": config.weights,
            "kv_type": config.kv_type,
            "flash_attn": config.flash_attn,
            "flash_attn_resolved": peer_rounds[0]["flash_attn_resolved"],
            "kv_cache_mib": peer_rounds[0]["kv_cache_mib"],
            "kv_cells_per_seq": peer_rounds[0]["kv_cells_per_seq"],
            "requests": peer_rounds[0]["requests"],
            "llama_cpp_tokens_per_s": peer_tps,
            "llmos_tokens_per_s": llmos_tps,
            "speedup_vs_llama_cpp": llmos_tps / peer_tps,
            "llama_cpp_peak_rss_bytes": int(peer_rss),
            "llmos_peak_rss_bytes": int(llmos_rss),
            "rss_vs_llama_cpp": llmos_rss / peer_rss,
            "round_speedups": [
                a["output_tokens_per_s"] / b["output_tokens_per_s"] for a, b in zip(llmos_rounds, peer_rounds)
            ],
        }

    def run(self, version: str) -> dict[str, Any]:
        paths = self.gguf_paths()
        check = self.check_f32(paths)
        runs = [row for c in self.config.concurrency_levels for row in self.measure_level(c, paths)]
        weights = llmos_weights(self.config.quantization, str(self.bench.loaded.dtype))
        return {
            "name": "llama.cpp",
            "version": version,
            "threads": self.threads,
            "rounds": self.config.rounds,
            "llmos_kv_dtype": str(self.bench.kv_dtype).removeprefix("torch."),
            "kv_unified": False,
            "omp_wait_policy": self.env.get("OMP_WAIT_POLICY"),
            "gguf_bytes": {weights: path.stat().st_size for weights, path in paths.items()},
            "peak_rss": "VmHWM of a fresh process per run on each side (model, engine, KV cache, runtime)",
            "f32_check": check,
            "runs": runs,
            "llmos_weights": weights,
            "targets": peer_targets(runs, weights),
        }


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(run[key] for run in runs))


def measure_peer(bench: Any, echo: Callable[[str], None]) -> dict[str, Any]:
    """The JSON line's `peer`, `peer_skipped` and `peer_f32_matches_transformers_tokens`."""
    version = llama_cpp_version()
    if version is None:
        click.echo(NOT_INSTALLED, err=True)
        return {"peer": None, "peer_skipped": NOT_INSTALLED, "peer_f32_matches_transformers_tokens": None}
    peer = PeerBench(bench, echo).run(version)
    check = peer["f32_check"]
    return {
        "peer": peer,
        "peer_skipped": None,
        "peer_f32_matches_transformers_tokens": check and check["matching_leading_tokens"],
    }
