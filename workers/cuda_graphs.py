"""Decode steps of the paged engine on fixed shapes, replayed as CUDA graphs.

On a GPU a decode step of a small model is launch-bound: transformers' forward
issues some twenty kernels a layer, each a few microseconds of Python and driver
work, while the arithmetic of 32 rows takes a fraction of that. vLLM and SGLang
capture the decode step once per batch size and replay it: one launch for the
whole step. `DecodeGraphs` does the same for the paged engine's decode-only steps
(every row one token; prefills and mixed steps run the regular forward):

- the step runs on static buffers: token ids, positions, slots, context lengths
  and block tables live in one int64 buffer on the device; a step copies its
  values in (one host-to-device copy) and replays the graph of its shape;
- shapes come in buckets, as vLLM's: rows 1, 2, 4, then multiples of 8 up to the
  engine's `max_num_seqs`; blocks per row, the next power of two. A step pads to its
  bucket: the padded rows write their keys and values to a scratch block of the
  pools (`PagedCache(num_scratch_blocks=1)`) and read only that;
- `StaticDecode` is the step itself: the Llama layer (Llama, Mistral, Qwen2,
  Qwen3) written with torch operators only, no host synchronisation, attention
  over the rows' blocks gathered up to the bucket's length and masked past each
  context. Its arithmetic is transformers' (tests/test_cuda_graphs.py compares
  the logits on CPU, where the same code runs eagerly);
- the engine captures every bucket's graph when it starts, up to its context
  length (`capture_all`, on steps of padded rows only), after one eager warm-up
  each on a side stream; all graphs share one memory pool and one logits buffer.
  A shape past them is captured the first time it runs. When the pools are
  reallocated (a grant past them, another block size) the graphs are dropped and
  captured again.

On CPU (tests), past the largest row bucket, and for shapes of more than
MAX_GRAPH_ROW_TOKENS rows times tokens (long contexts, whose gathered keys and
values outweigh the launches a graph saves; a CUDA paged-attention kernel that
reads only each context's blocks would lift this) `StaticDecode` runs eagerly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch.nn.functional import linear, scaled_dot_product_attention, silu

from workers.paged_cache import PagedCache

GRAPH_FAMILIES = frozenset({"llama", "mistral", "qwen2", "qwen3"})
# rotary embeddings whose cos and sin depend on the position only (not on the longest context)
STATIC_ROPE_TYPES = frozenset({"default", "linear", "llama3", "yarn"})
SMALL_ROW_BUCKETS = (1, 2, 4)
# attention gathers each row's blocks up to its bucket's length: shapes of more row-tokens
# than this run eagerly (their gathered keys and values would outweigh what a graph saves)
MAX_GRAPH_ROW_TOKENS = 1 << 17
ROW_BUCKET_STEP = 8


class DecodeRow(Protocol):
    """What `DecodeGraphs` reads of a `PagedRow` whose one new token is a decode."""

    block_ids: Sequence[int]
    num_computed: int
    token_ids: Sequence[int]


def row_buckets(max_rows: int) -> list[int]:
    """The row counts graphs are captured for: 1, 2, 4, then every 8, up to the first
    one that holds `max_rows`."""
    candidates = [*SMALL_ROW_BUCKETS, *range(ROW_BUCKET_STEP, max_rows + ROW_BUCKET_STEP, ROW_BUCKET_STEP)]
    largest = next(rows for rows in candidates if rows >= max_rows)
    return [rows for rows in candidates if rows <= largest]


def blocks_bucket(num_blocks: int) -> int:
    return 1 << max(num_blocks - 1, 0).bit_length()


def static_decode_for(model: Any) -> StaticDecode | None:
    """A StaticDecode of `model`, or None where the family or its RoPE is not one it computes."""
    config = model.config
    rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
    partial = (getattr(config, "rope_parameters", None) or {}).get("partial_rotary_factor", 1.0)
    if (
        getattr(config, "model_type", None) not in GRAPH_FAMILIES
        or getattr(config, "hidden_act", None) != "silu"
        or rotary is None
        or getattr(rotary, "rope_type", "default") not in STATIC_ROPE_TYPES
        or partial not in (None, 1.0)
        or not hasattr(model, "lm_head")
        or not all(type(module) is torch.nn.Linear for module in linears_of(model))
    ):
        return None
    return StaticDecode(model)


def linears_of(model: Any) -> list[Any]:
    modules = [model.lm_head]
    for layer in model.model.layers:
        attention, mlp = layer.self_attn, layer.mlp
        modules += [attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj]
        modules += [mlp.gate_proj, mlp.up_proj, mlp.down_proj]
    return modules


@dataclass(frozen=True)
class StepBuffers:
    """One bucket's views of the static int64 buffer (all `[rows]` but `block_tables`)."""

    token_ids: torch.Tensor
    positions: torch.Tensor
    slots: torch.Tensor
    context_lens: torch.Tensor
    block_tables: torch.Tensor  # [rows, blocks]


def rms_norm(hidden: torch.Tensor, norm: Any) -> torch.Tensor:
    """transformers' LlamaRMSNorm: in float32, then the weight times the input's dtype."""
    dtype = hidden.dtype
    hidden = hidden.float()
    hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * hidden.to(dtype)


def rotate(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE of `[rows, heads, head_dim]` with cos and sin `[rows, 1, head_dim]`."""
    half = states.shape[-1] // 2
    rotated = torch.cat((-states[..., half:], states[..., :half]), dim=-1)
    return states * cos + rotated * sin


class StaticDecode:
    """One decode token per row through the model's layers, shapes fixed by the buffers."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.layers = list(model.model.layers[: model.config.num_hidden_layers])

    def allocate_pools(self, cache: PagedCache) -> None:
        """Every layer's pools, allocated now if they are not (on the current stream)."""
        for layer, pools in zip(self.layers, cache.paged_layers, strict=True):
            attention = layer.self_attn
            num_kv_heads = attention.config.num_key_value_heads
            pools.pools_for(num_kv_heads, attention.head_dim, self.model.dtype, self.model.device)

    def __call__(self, cache: PagedCache, buffers: StepBuffers) -> torch.Tensor:
        """Logits `[rows, vocab]`; stores each row's keys and values at its slot."""
        inner = self.model.model
        hidden = inner.embed_tokens(buffers.token_ids)  # [rows, hidden]
        cos, sin = (part[0][:, None, :] for part in inner.rotary_emb(hidden[None], buffers.positions[None]))
        num_rows = hidden.shape[0]
        for layer, pools in zip(self.layers, cache.paged_layers, strict=True):
            attention, mlp = layer.self_attn, layer.mlp
            normed = rms_norm(hidden, layer.input_layernorm)
            query = attention.q_proj(normed).view(num_rows, -1, attention.head_dim)
            key = attention.k_proj(normed).view(num_rows, -1, attention.head_dim)
            value = attention.v_proj(normed).view(num_rows, -1, attention.head_dim)
            if hasattr(attention, "q_norm"):  # Qwen3: each head's query and key normed first
                query, key = rms_norm(query, attention.q_norm), rms_norm(key, attention.k_norm)
            query, key = rotate(query, cos, sin), rotate(key, cos, sin)
            keys, values = pools.pools_for(key.shape[1], attention.head_dim, key.dtype, key.device)
            block_size = keys.shape[2]
            blocks, offsets = buffers.slots // block_size, buffers.slots % block_size
            keys[blocks, :, offsets] = key.to(keys.dtype)
            values[blocks, :, offsets] = value.to(values.dtype)
            attended = attend(query, keys, values, buffers, float(attention.scaling))
            hidden = hidden + attention.o_proj(attended.reshape(num_rows, -1))
            normed = rms_norm(hidden, layer.post_attention_layernorm)
            hidden = hidden + mlp.down_proj(silu(mlp.gate_proj(normed)) * mlp.up_proj(normed))
        return linear(rms_norm(hidden, inner.norm), self.model.lm_head.weight, self.model.lm_head.bias)


def attend(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, buffers: StepBuffers, scale: float
) -> torch.Tensor:
    """`query` `[rows, heads, head_dim]` against each row's blocks, up to the bucket's length
    and masked past its context; `[rows, heads, head_dim]`."""
    num_rows, num_blocks = buffers.block_tables.shape
    _, num_kv_heads, block_size, head_dim = keys.shape
    length = num_blocks * block_size
    mask = (
        torch.arange(length, device=query.device)[None, :] < buffers.context_lens[:, None]
    )  # [rows, length]

    def gathered(pool: torch.Tensor) -> torch.Tensor:  # [rows, kv_heads, length, head_dim]
        states = pool[buffers.block_tables].transpose(1, 2).reshape(num_rows, num_kv_heads, length, head_dim)
        # slots past a context may hold anything a block held before, or never written: zeros
        return torch.where(mask[:, None, :, None], states.to(query.dtype), 0)

    out = scaled_dot_product_attention(
        query.unsqueeze(2),
        gathered(keys),
        gathered(values),
        attn_mask=mask[:, None, None, :],
        scale=scale,
        enable_gqa=True,
    )
    return out.squeeze(2)


class DecodeGraphs:
    """Decode-only steps of one `PagedCache` on static buffers, replayed as CUDA graphs
    where the model is on a CUDA device (eagerly elsewhere)."""

    def __init__(self, decode: StaticDecode, cache: PagedCache, max_rows: int) -> None:
        assert cache.num_scratch_blocks >= 1, "padded rows need a scratch block"
        self.decode = decode
        self.cache = cache
        self.device = decode.model.device
        self.buckets = row_buckets(max_rows)
        self.buffer = torch.zeros(0, dtype=torch.long, device=self.device)  # grows to the steps' shapes
        # every graph's logits land here, so the graphs share their activations' memory
        head = decode.model.lm_head.weight
        self.logits = torch.empty(self.buckets[-1], head.shape[0], dtype=head.dtype, device=self.device)
        self.is_capturing = self.device.type == "cuda"
        self.graphs: dict[tuple[int, int], tuple[Any, torch.Tensor]] = {}
        self.pools_at: int | None = None  # the pools the graphs were captured on (data_ptr)
        self.memory_pool: Any = None
        self.num_captured = 0
        self.num_replayed = 0

    def shape_for(self, rows: Sequence[DecodeRow]) -> tuple[int, int]:
        """The bucket `(rows, blocks)` of a step; its own row count past the largest bucket."""
        num_blocks = blocks_bucket(max(row.num_computed // self.cache.block_size + 1 for row in rows))
        num_rows = next((bucket for bucket in self.buckets if bucket >= len(rows)), len(rows))
        return num_rows, num_blocks

    def buffers(self, num_rows: int, num_blocks: int) -> StepBuffers:
        parts = self.buffer[: num_rows * (4 + num_blocks)]
        token_ids, positions, slots, context_lens = parts[: 4 * num_rows].view(4, num_rows)
        return StepBuffers(
            token_ids, positions, slots, context_lens, parts[4 * num_rows :].view(num_rows, num_blocks)
        )

    def fill(self, rows: Sequence[DecodeRow], num_rows: int, num_blocks: int) -> None:
        """The step's values into the static buffer; padded rows and table ends name the scratch block."""
        block_size, scratch = self.cache.block_size, self.cache.scratch_block_id
        num_padded = num_rows - len(rows)
        positions = [row.num_computed for row in rows]
        tables: list[int] = []
        for row, position in zip(rows, positions, strict=True):
            used = list(row.block_ids[: position // block_size + 1])
            tables += used + [scratch] * (num_blocks - len(used))
        values = (
            [row.token_ids[0] for row in rows]
            + [0] * num_padded
            + positions
            + [0] * num_padded
            + [
                row.block_ids[p // block_size] * block_size + p % block_size
                for row, p in zip(rows, positions, strict=True)
            ]
            + [scratch * block_size] * num_padded
            + [p + 1 for p in positions]
            + [1] * num_padded
            + tables
            + [scratch] * (num_padded * num_blocks)
        )
        self.buffer[: len(values)].copy_(torch.tensor(values, dtype=torch.long), non_blocking=True)

    @torch.inference_mode()
    def __call__(self, rows: Sequence[DecodeRow]) -> torch.Tensor:
        """Logits `[len(rows), vocab]` of the rows' one new token each."""
        assert rows and all(len(row.token_ids) == 1 for row in rows), "decode rows only"
        num_rows, num_blocks = self.shape_for(rows)
        self.make_room(num_rows, num_blocks)
        self.fill(rows, num_rows, num_blocks)
        if not self.is_capturing or not self.is_graphed(num_rows, num_blocks):
            return self.decode(self.cache, self.buffers(num_rows, num_blocks))[: len(rows)]
        graph, logits = self.graph_for((num_rows, num_blocks))
        graph.replay()
        self.num_replayed += 1
        return logits[: len(rows)].clone()  # the next replay of any graph writes there

    def is_graphed(self, num_rows: int, num_blocks: int) -> bool:
        return (
            num_rows <= self.buckets[-1]
            and num_rows * num_blocks * self.cache.block_size <= MAX_GRAPH_ROW_TOKENS
        )

    def make_room(self, num_rows: int, num_blocks: int) -> None:
        """A buffer that holds the step's shape (a new one: the graphs read the old)."""
        if num_rows * (4 + num_blocks) > self.buffer.numel():
            size = max(num_rows, self.buckets[-1]) * (4 + 2 * num_blocks)
            self.buffer = torch.zeros(size, dtype=torch.long, device=self.device)
            self.drop_graphs()

    @torch.inference_mode()
    def capture_all(self, max_num_blocks: int) -> None:
        """Capture every bucket up to `max_num_blocks` blocks a row now, so that no step
        pays for a capture later; on steps of padded rows only (they write the scratch
        block alone). The largest first, as vLLM does: the smaller reuse their memory.
        In inference mode, as every step: the engine captures when it is built, and with
        autograd on, each capture's activations would stay saved for a backward pass
        (held by the pools and the logits, in the graphs' memory pool)."""
        if not self.is_capturing:
            return
        block_buckets = [1 << power for power in range(blocks_bucket(max_num_blocks).bit_length())]
        self.make_room(self.buckets[-1], block_buckets[-1])
        for num_blocks in reversed(block_buckets):
            for num_rows in reversed(self.buckets):
                if not self.is_graphed(num_rows, num_blocks):
                    continue
                self.fill([], num_rows, num_blocks)
                self.graph_for((num_rows, num_blocks))

    def graph_for(self, shape: tuple[int, int]) -> tuple[Any, torch.Tensor]:
        """The graph of `shape`, captured now if it is new (or the pools moved)."""
        if self.pools_address() != self.pools_at:
            self.drop_graphs()
        if shape not in self.graphs:
            self.graphs[shape] = self.capture(self.buffers(*shape))
            self.num_captured += 1
            self.pools_at = self.pools_address()  # `capture` may have allocated them
        return self.graphs[shape]

    def pools_address(self) -> int | None:
        first = self.cache.paged_layers[0]
        return first.keys.data_ptr() if first.is_initialized else None

    def capture(self, buffers: StepBuffers) -> tuple[Any, torch.Tensor]:
        """Run the step once eagerly on a side stream (kernel selection, workspaces), then
        capture it. The eager run and the replay that follows write the same keys and
        values to the same slots. The pools are allocated first, on the current stream."""
        self.decode.allocate_pools(self.cache)
        current = torch.cuda.current_stream()
        side = torch.cuda.Stream()
        side.wait_stream(current)
        with torch.cuda.stream(side):
            self.decode(self.cache, buffers)
        current.wait_stream(side)
        if self.memory_pool is None:
            self.memory_pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        num_rows = buffers.token_ids.shape[0]
        # thread_local: another thread's CUDA calls (a worker's main thread) do not spoil the capture
        with torch.cuda.graph(graph, pool=self.memory_pool, capture_error_mode="thread_local"):
            self.logits[:num_rows].copy_(self.decode(self.cache, buffers))
        return graph, self.logits[:num_rows]

    def drop_graphs(self) -> None:
        self.graphs.clear()
        self.pools_at = None
