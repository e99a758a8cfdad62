"""The llmos side of one `--peer` round, in a process of its own, as llama.cpp's is.

`python -m llmos_bench.peer_llmos` reads a job (JSON: the bench's settings, the
concurrency and the matmul peak) on stdin, loads the model as the bench does,
warms the engine up, runs the same closed loop at that concurrency on the same
prompts, and prints one JSON line with the figures and its peak RSS (VmHWM).
A fresh process per run on each side: both RSS figures count one model, one
engine and its KV cache, the runtime each needs (Python and torch here, Python
and llama.cpp there), and nothing left over from other runs.
"""

from __future__ import annotations

import json
import sys

import torch

from llmos_bench.engine import EngineBench, EngineBenchConfig, engine_class, resolve_engine
from llmos_bench.rss import peak_rss_bytes
from workers.model_loader import load_model, load_tokenizer


def run(settings: dict, concurrency: int, peak_flops: float) -> dict:
    config = EngineBenchConfig(**{**settings, "skip_baselines": True, "peer": ""})
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    loaded = load_model(config.worker_config())
    engine_cls = engine_class(
        resolve_engine(config.engine, loaded.model, config.max_model_len, config.cuda_graphs)
    )
    bench = EngineBench(config, loaded, load_tokenizer(loaded.path), engine_cls, peak_flops)
    bench.warm_up()
    return bench.measure_level(concurrency)


def main() -> None:
    job = json.load(sys.stdin)
    figures = run(job["settings"], job["concurrency"], job["peak_flops"])
    figures["peak_rss_bytes"] = peak_rss_bytes()
    sys.stdout.write(json.dumps(figures) + "\n")


if __name__ == "__main__":
    main()
