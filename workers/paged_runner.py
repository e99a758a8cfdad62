"""The model side of a paged KV cache: one packed forward for any mix of decodes and prefill chunks.

Each row of a forward is a request's next tokens (`PagedRow`): one for a decode,
many for a prefill chunk, which may start after a prefix its blocks already hold
(cached, or computed by an earlier chunk). The rows' tokens run as one `[1, tokens]`
input with their own positions; their keys and values go to their blocks, and each
token attends to its row's context up to itself (`workers.paged_cache`). The logits
kept are each row's last token's: the next token of a decode, or of a prefill that
ends its context (a chunk that does not end it has no use for its logits).

Plain mechanism: the caller decides who runs and owns the block tables (blocks come
from the cache's `BlockPool`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from workers.cpu_linears import CpuLinears
from workers.cuda_graphs import DecodeGraphs, static_decode_for
from workers.direct_forward import direct_forward_for
from workers.paged_cache import PagedCache, PagedStep, paged_forward


@dataclass
class PagedRow:
    block_ids: Sequence[int]  # the request's block table: room for every token below
    num_computed: int  # tokens whose keys and values the blocks hold already
    token_ids: Sequence[int]  # the tokens this forward computes, at positions from num_computed


class PagedRunner:
    def __init__(
        self,
        model: Any,
        num_blocks: int,
        block_size: int,
        cpu_weights: str = "fast",
        release_unused_weights: bool = False,
        kv_dtype: torch.dtype | None = None,
        graph_rows: int = 0,
    ) -> None:
        """`kv_dtype`: the pools' dtype (None: the model's activations'). `graph_rows` > 0:
        decode-only steps run on static buffers (`workers.cuda_graphs`), replayed as CUDA
        graphs on a CUDA device, for up to that many rows; where the model is not one
        `StaticDecode` computes, `graphs` stays None."""
        self.model = model
        self.kv_dtype = kv_dtype
        self.device = model.device
        self.num_layers = model.config.get_text_config().num_hidden_layers
        self.static_decode = static_decode_for(model) if graph_rows > 0 else None
        self.graph_rows = graph_rows
        self.graph_tokens = 0  # the context the graphs were captured up to (`capture_graphs`)
        self.cache = self.new_cache(num_blocks, block_size)
        self.graphs = self.new_graphs()
        # newer transformers call the cache argument `cache`, older ones `past_key_values`
        parameters = inspect.signature(model.forward).parameters
        self.cache_kwarg = "cache" if "cache" in parameters else "past_key_values"
        self.can_keep_last_logits = "logits_to_keep" in parameters
        self.cpu_linears = CpuLinears(model, cpu_weights, release_unused_weights)
        # Llama-style float32 models on CPU skip transformers' forward (workers.direct_forward)
        self.direct = direct_forward_for(model, self.cpu_linears.forward_by_module())

    def reset(self, num_blocks: int, block_size: int) -> None:
        """A fresh cache of another geometry (what the old one held is gone)."""
        self.cache = self.new_cache(num_blocks, block_size)
        self.graphs = self.new_graphs()
        self.capture_graphs(self.graph_tokens)

    def capture_graphs(self, max_num_tokens: int) -> None:
        """Capture the decode graphs of contexts up to `max_num_tokens` now (CUDA only)."""
        self.graph_tokens = max_num_tokens
        if self.graphs is not None and max_num_tokens > 0:
            self.graphs.capture_all(math.ceil(max_num_tokens / self.block_size))

    def new_cache(self, num_blocks: int, block_size: int) -> PagedCache:
        num_scratch_blocks = 1 if self.static_decode is not None else 0
        return PagedCache(self.num_layers, num_blocks, block_size, self.kv_dtype, num_scratch_blocks)

    def new_graphs(self) -> DecodeGraphs | None:
        if self.static_decode is None:
            return None
        return DecodeGraphs(self.static_decode, self.cache, self.graph_rows)

    @property
    def block_size(self) -> int:
        return self.cache.block_size

    def plan(self, rows: Sequence[PagedRow]) -> tuple[PagedStep, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The step's layout, its input ids and position ids `[1, tokens]`, and the packed
        index of each row's last token."""
        block_size = self.block_size
        token_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        token_rows: list[int] = []
        last_tokens: list[int] = []
        for index, row in enumerate(rows):
            stop = row.num_computed + len(row.token_ids)
            assert row.token_ids and len(row.block_ids) * block_size >= stop, "no room for the row's tokens"
            span = range(row.num_computed, stop)
            token_ids += row.token_ids
            positions += span
            slots += [row.block_ids[p // block_size] * block_size + p % block_size for p in span]
            token_rows += [index] * len(span)
            last_tokens.append(len(token_ids) - 1)
        max_blocks = max(len(row.block_ids) for row in rows)
        tables = [list(row.block_ids) + [0] * (max_blocks - len(row.block_ids)) for row in rows]
        device = self.device
        step = PagedStep(
            slots=torch.tensor(slots, dtype=torch.long, device=device),
            token_rows=torch.tensor(token_rows, dtype=torch.int32, device=device),
            context_lens=torch.tensor([p + 1 for p in positions], dtype=torch.int32, device=device),
            block_tables=torch.tensor(tables, dtype=torch.int32, device=device),
            max_context_len=max(positions) + 1,
        )
        return (
            step,
            torch.tensor([token_ids], device=device),
            torch.tensor([positions], device=device),
            torch.tensor(last_tokens, device=device),
        )

    @torch.inference_mode()
    def forward(self, rows: Sequence[PagedRow]) -> torch.Tensor:
        """Run the rows' tokens; each row's last token's logits `[rows, vocab]`."""
        self.cache.make_room_for([block_id for row in rows for block_id in row.block_ids])
        if self.graphs is not None and all(len(row.token_ids) == 1 for row in rows):
            return self.graphs(rows)
        step, input_ids, position_ids, last_tokens = self.plan(rows)
        if self.direct is not None:
            return self.direct(self.cache, step, input_ids[0], position_ids[0], last_tokens)
        kwargs: dict[str, Any] = {self.cache_kwarg: self.cache, "use_cache": True}
        if self.can_keep_last_logits:
            kwargs["logits_to_keep"] = last_tokens
        with paged_forward(self.model, step), self.cpu_linears.on_onednn():
            logits = self.model(input_ids=input_ids, position_ids=position_ids, **kwargs).logits
        return logits[0] if self.can_keep_last_logits else logits[0, last_tokens]
