"""`--kv-cache-dtype`: the dtype a worker's KV cache holds keys and values in.

`auto` keeps the model's activation dtype (float32 on CPU by default), so greedy
answers equal `model.generate`. `float16` or `bfloat16` stores a float32 model's keys
and values rounded once to 16 bits, as llama.cpp's default (float16) and vLLM's
`--kv-cache-dtype` do: half the KV memory a token (twice the tokens in a grant's
memory), and half the bytes attention reads a step, for answers that may part from
float32's after some tokens (docs/benchmarks.md, "Precision on CPU"). The paged
engine runs such a cache (its store rounds, its attention reads back to float32); the
padded and reference engines keep the model's dtype.
"""

from __future__ import annotations

import torch

KV_CACHE_DTYPES = {"auto": None, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_kv_cache_dtype(name: str, model_dtype: torch.dtype) -> torch.dtype:
    """The KV cache's dtype for `--kv-cache-dtype name` on a model computing in
    `model_dtype`; ValueError, in one line, for a name or a pairing it cannot run."""
    if name not in KV_CACHE_DTYPES:
        raise ValueError(f"unknown --kv-cache-dtype {name!r}; use one of {', '.join(KV_CACHE_DTYPES)}")
    dtype = KV_CACHE_DTYPES[name]
    if dtype is None or dtype == model_dtype:
        return model_dtype
    if model_dtype != torch.float32:
        raise ValueError(
            f"--kv-cache-dtype {name} needs a float32 model (this one computes in "
            f"{str(model_dtype).removeprefix('torch.')}); use auto"
        )
    return dtype


def check_engine_runs(engine: str, name: str, model_dtype: torch.dtype) -> None:
    """ValueError, in one line, where the engine named `engine` (auto resolved: batched,
    paged or reference) cannot keep the KV cache `--kv-cache-dtype name` asks for."""
    if resolve_kv_cache_dtype(name, model_dtype) != model_dtype and engine != "paged":
        raise ValueError(
            f"--kv-cache-dtype {name} runs on the paged engine; this worker's is "
            f"{engine} (--engine paged, or on CPU --engine auto with a model it computes)"
        )
