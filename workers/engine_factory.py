"""Which engine a worker runs: the names and the one function that maps a name to an engine."""

from __future__ import annotations

import enum
from typing import Any

from workers import cpu_kernels
from workers.batched_engine import BatchedEngine
from workers.kv_dtype import check_engine_runs
from workers.model_facts import model_context_length
from workers.paged_engine import PagedEngine, supports_paged
from workers.reference_engine import ReferenceEngine

GenerateEngine = ReferenceEngine | BatchedEngine | PagedEngine


class EngineKind(enum.Enum):
    AUTO = "auto"  # paged where it is exact and fast (`paged_fits`), else batched
    BATCHED = "batched"  # workers.batched_engine: one forward per step for the whole batch
    PAGED = "paged"  # workers.paged_engine: the same over a paged KV cache (blocks, shared prefixes)
    REFERENCE = "reference"  # workers.reference_engine: one cache and one forward per request


def paged_fits(model: Any, max_model_len: int) -> bool:
    """Whether `auto` picks the paged engine: a model it computes exactly, on CPU with its
    kernels (on other devices attention through blocks runs in plain torch, slower than
    the padded cache's)."""
    return (
        model.device.type == "cpu"
        and supports_paged(model, max_model_len or model_context_length(model))
        and cpu_kernels.has_kernels()
    )


def make_engine(
    kind: str,
    model: Any,
    tokenizer: Any,
    *,
    max_num_seqs: int,
    max_model_len: int,
    worker_id: str,
    num_blocks: int,
    block_size: int,
    max_num_batched_tokens: int,
    prefix_caching: bool = True,
    mixed_steps: bool = True,
    cpu_weights: str = "fast",
    release_unused_weights: bool = False,
    kv_cache_dtype: str = "auto",
    cuda_graphs: bool = False,
) -> GenerateEngine:
    """The engine named `kind`; the KV geometry and the step's token budget are the batched
    and paged engines'; a `kv_cache_dtype` other than the model's, the paged engine's."""
    try:
        engine_kind = EngineKind(kind)
    except ValueError:
        names = ", ".join(k.value for k in EngineKind)
        raise ValueError(f"unknown engine {kind!r}; use one of {names}") from None
    if engine_kind is EngineKind.AUTO:
        is_paged = paged_fits(model, max_model_len) or cuda_graphs
        engine_kind = EngineKind.PAGED if is_paged else EngineKind.BATCHED
    if cuda_graphs and engine_kind is not EngineKind.PAGED:
        raise ValueError(f"CUDA graphs run in the paged engine, not the {engine_kind.value} one")
    check_engine_runs(engine_kind.value, kv_cache_dtype, model.dtype)
    if engine_kind is EngineKind.REFERENCE:
        return ReferenceEngine(
            model, tokenizer, max_num_seqs=max_num_seqs, max_model_len=max_model_len, worker_id=worker_id
        )
    options: dict[str, Any] = dict(
        max_num_seqs=max_num_seqs,
        max_model_len=max_model_len,
        worker_id=worker_id,
        num_blocks=num_blocks,
        block_size=block_size,
        max_num_batched_tokens=max_num_batched_tokens,
        prefix_caching=prefix_caching,
        cpu_weights=cpu_weights,
        release_unused_weights=release_unused_weights,
    )
    if engine_kind is EngineKind.PAGED:  # its steps are always mixed
        return PagedEngine(
            model, tokenizer, kv_cache_dtype=kv_cache_dtype, cuda_graphs=cuda_graphs, **options
        )
    return BatchedEngine(model, tokenizer, mixed_steps=mixed_steps, **options)
