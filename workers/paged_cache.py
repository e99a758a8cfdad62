"""A physical paged KV cache: keys and values live in fixed-size blocks, placed by block tables.

vLLM's PagedAttention on our own terms. Each layer keeps one pool of keys and one of
values, `[blocks, kv_heads, block_size, head_dim]`. A request owns a block table:
the ids of the blocks that hold its tokens, in order (token p sits in block
`table[p // block_size]`, at offset `p % block_size`). So
- memory follows the blocks in use: a request holds `ceil(tokens / block_size)`
  blocks, not a row as wide as the longest request's;
- blocks are shared, not copied: two requests whose contexts start with the same
  blocks name the same block ids (`BlockPool` counts the references), and a
  cached prefix is a list of block ids;
- nothing is padded: a forward packs every row's new tokens into one `[1, tokens]`
  input with their positions; a decode brings one token, a prefill chunk many, and
  each token attends to its row's context up to itself (`workers.paged_ops`).

`PagedCache` is a transformers `Cache`: while `paged_forward` runs a `PagedStep`, the
model's `update` stores each layer's new keys and values at the step's slots, and the
attention function registered here (PAGED_ATTENTION) attends through the block tables.

The pools are as large as the grant, but on CPU they are reserved, not filled: the
OS commits their memory page by page as blocks are first written, and `BlockPool`
hands out the lowest free ids, so the memory a worker holds is the most blocks it
ever had in use at once (`num_bytes`), never rows as wide as the longest request.
Nothing reads a block's slot before it is written. On a GPU the pools are allocated
whole, as vLLM does. A grant larger than the pools grows them (a copy).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, CacheLayerMixin

from workers import paged_ops

PAGED_ATTENTION = "llmos_paged"


class BlockPool:
    """Which block ids are in use, and how many holders each has. At most `num_blocks`
    are in use at once (the kernel's grant, which may change: `resize`); a new id is
    minted only when no freed one is left, and the lowest free id goes first, so the
    ids in use stay dense and the pools stay small."""

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self.free_ids: list[int] = []  # a heap of ids used before and free now: the lowest first
        self.ref_counts: list[int] = []  # per id ever minted
        self.num_used_blocks = 0

    @property
    def num_free_blocks(self) -> int:
        return max(self.num_blocks - self.num_used_blocks, 0)

    def can_allocate(self, num_blocks: int) -> bool:
        return num_blocks <= self.num_free_blocks

    def allocate(self, num_blocks: int) -> list[int]:
        assert self.can_allocate(num_blocks), f"{num_blocks} blocks asked, {self.num_free_blocks} free"
        block_ids = []
        for _ in range(num_blocks):
            if self.free_ids:
                block_id = heapq.heappop(self.free_ids)
            else:
                block_id = len(self.ref_counts)
                self.ref_counts.append(0)
            self.ref_counts[block_id] = 1
            block_ids.append(block_id)
        self.num_used_blocks += num_blocks
        return block_ids

    def share(self, block_ids: Sequence[int]) -> None:
        """One more holder for blocks in use (a request starting with a cached prefix)."""
        for block_id in block_ids:
            assert self.ref_counts[block_id] > 0, f"block {block_id} is free"
            self.ref_counts[block_id] += 1

    def release(self, block_ids: Sequence[int]) -> None:
        """One holder fewer; a block nobody holds is free again."""
        for block_id in block_ids:
            assert self.ref_counts[block_id] > 0, f"block {block_id} is free already"
            self.ref_counts[block_id] -= 1
            if not self.ref_counts[block_id]:
                heapq.heappush(self.free_ids, block_id)
                self.num_used_blocks -= 1

    def resize(self, num_blocks: int) -> None:
        """A new grant; more may be in use than it allows until holders release them."""
        self.num_blocks = num_blocks


@dataclass
class PagedStep:
    """The layout of one packed forward: for each new token, its slot (where its keys
    and values go), its row and its context length (its position + 1); for each row,
    its block table. Int tensors on the model's device."""

    slots: torch.Tensor  # [tokens] int64
    token_rows: torch.Tensor  # [tokens] int32
    context_lens: torch.Tensor  # [tokens] int32
    block_tables: torch.Tensor  # [rows, max blocks] int32
    # the longest of context_lens, known on the host (on a GPU, reading it back would
    # make every layer wait for the device)
    max_context_len: int


# the step of the packed forward under way, for the cache's `update` and the attention
CURRENT_STEP: ContextVar[PagedStep | None] = ContextVar("llmos_paged_step", default=None)


class PagedLayer(CacheLayerMixin):
    """One layer's pools; allocated (uninitialised) at the first `update`, which gives
    their shape and dtype."""

    is_sliding = False

    def __init__(self, cache: PagedCache) -> None:
        super().__init__()
        self.cache = cache

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        _, num_kv_heads, _, head_dim = key_states.shape
        self.pools_for(num_kv_heads, head_dim, key_states.dtype, key_states.device)

    def pools_for(
        self, num_kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's key and value pools, allocated at the first call: in the cache's
        `kv_dtype`, else in `dtype` (the activations')."""
        if not self.is_initialized:
            shape = (self.cache.num_pool_blocks, num_kv_heads, self.cache.block_size, head_dim)
            self.keys = torch.empty(shape, dtype=self.cache.kv_dtype or dtype, device=device)
            self.values = torch.empty_like(self.keys)
            self.is_initialized = True
        return self.keys, self.values

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the step's new keys and values (`[1, kv_heads, tokens, head_dim]`); the pools."""
        step = CURRENT_STEP.get()
        assert step is not None, "a PagedCache is written only inside paged_forward"
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        paged_ops.store_kv(
            self.keys, self.values, key_states[0].transpose(0, 1), value_states[0].transpose(0, 1), step.slots
        )
        return self.keys, self.values

    def grow(self, num_pool_blocks: int) -> None:
        if not self.is_initialized:
            return
        keys = self.keys.new_empty((num_pool_blocks, *self.keys.shape[1:]))
        values = torch.empty_like(keys)
        keys[: self.keys.shape[0]] = self.keys
        values[: self.values.shape[0]] = self.values
        self.keys, self.values = keys, values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return query_length, 0  # no mask is built for PAGED_ATTENTION

    def get_seq_length(self) -> int:
        return 0  # positions come with every forward

    def get_max_length(self) -> int:
        return -1


class PagedCache(Cache):
    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        kv_dtype: torch.dtype | None = None,
        num_scratch_blocks: int = 0,
    ) -> None:
        """`kv_dtype`: the pools' dtype, where it is not the activations' (workers.kv_dtype);
        `num_scratch_blocks`: blocks past the capacity that no request owns, for the padded
        rows of a CUDA graph's step (workers.cuda_graphs) to write to."""
        self.kv_dtype = kv_dtype
        self.paged_layers = [PagedLayer(self) for _ in range(num_layers)]  # the same as `layers`, typed
        super().__init__(layers=list(self.paged_layers))
        self.blocks = BlockPool(num_blocks)
        self.block_size = block_size
        self.capacity = max(num_blocks, 1)  # blocks the pools have room for
        self.num_scratch_blocks = num_scratch_blocks
        self.num_touched_blocks = 0  # blocks [0, this) have been written: their memory is committed

    @property
    def num_pool_blocks(self) -> int:
        return self.capacity + self.num_scratch_blocks

    @property
    def scratch_block_id(self) -> int:
        assert self.num_scratch_blocks, "this cache has no scratch block"
        return self.capacity

    @property
    def num_bytes(self) -> int:
        """Bytes the pools hold, every layer's keys and values: on CPU the blocks written
        so far (the OS commits the rest only when written), elsewhere the whole pools."""
        layers = [layer for layer in self.layers if layer.is_initialized]
        if not layers:
            return 0
        num_blocks = self.num_touched_blocks if layers[0].keys.device.type == "cpu" else self.num_pool_blocks
        return sum(2 * layer.keys[0].numel() * layer.keys.element_size() for layer in layers) * num_blocks

    def make_room_for(self, block_ids: Sequence[int]) -> None:
        """Note the blocks a forward writes; grow the pools if the grant grew past them."""
        highest = max(block_ids, default=-1)
        self.num_touched_blocks = max(self.num_touched_blocks, highest + 1)
        if highest < self.capacity:
            return
        self.capacity = max(self.blocks.num_blocks, highest + 1)
        for layer in self.paged_layers:
            layer.grow(self.num_pool_blocks)


@contextmanager
def paged_forward(model: Any, step: PagedStep) -> Iterator[None]:
    """For the one forward inside: the step's layout, and the model's attention switched
    to PAGED_ATTENTION; both as they were afterwards, whatever happens."""
    reset = CURRENT_STEP.set(step)
    config = model.config
    implementation, config._attn_implementation = config._attn_implementation, PAGED_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = implementation
        CURRENT_STEP.reset(reset)


def paged_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The attention function of a packed forward: `query` `[1, heads, tokens, head_dim]`,
    `key` and `value` the layer's pools (what `PagedLayer.update` returns);
    `[1, tokens, heads, head_dim]`."""
    step = CURRENT_STEP.get()
    assert step is not None, f"{PAGED_ATTENTION} attention outside a paged forward"
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = paged_ops.paged_attention(
        query[0].transpose(0, 1),
        key,
        value,
        step.block_tables,
        step.token_rows,
        step.context_lens,
        scale,
        max_context_len=step.max_context_len,
    )
    return out.unsqueeze(0), None


AttentionInterface.register(PAGED_ATTENTION, paged_attention)
