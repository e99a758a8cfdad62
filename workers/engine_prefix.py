"""Prefix caching for the batched engine: which blocks of context it keeps, finds and evicts.

The engine holds one `PrefixCaching` and calls its methods; it owns what it uses:
- the cache (`workers.prefix_cache.PrefixCache`: the kept blocks, their keys and
  values, their text hashes), which nothing else touches;
- one line of the engine's KV budget, PREFIX_CACHE_HOLDER, where the cached blocks
  count. Of the rest of the budget it only reads the free blocks and the block size.
It is handed the keys and values to keep (a prefill job's cache, rows of the batch
cache) and the token ids they hold; it never sees the engine's queues or requests.

Cached blocks use only blocks nobody holds: `evict_for` evicts them before the
engine preempts anyone, and `keep` lets older cached prefixes give way to newer
ones, never running requests.

`PrefixCachingOff` has the same methods for an engine without prefix caching
(turned off, or a model whose attention is not plain full attention): it keeps and
finds nothing, so the engine calls the same methods either way.
"""

from __future__ import annotations

import abc
from typing import Any

import torch

from llmos.prefix import prompt_block_hashes
from workers.batch_cache import BatchCache
from workers.kv_budget import KvBudget
from workers.model_runner import CachedPrefix, PrefillJob
from workers.prefix_cache import LayerKeysValues, PrefixCache

PREFIX_CACHE_HOLDER = "\0prefix-cache"  # the cached blocks' line in the KV budget (no request id)

# (token ids, row, column): a context to keep, whose first token sits at `column` of `row`
KeepEntry = tuple[list[int], int, int]


class PrefixCaching(abc.ABC):
    """What the batched engine asks of prefix caching (see the module doc)."""

    is_enabled: bool
    num_hit_tokens: int  # tokens that prefills did not have to compute

    @abc.abstractmethod
    def find(self, context_token_ids: list[int]) -> list[int]:
        """Block hashes of the longest cached prefix of a context; at least its last
        token is left to compute (its logits give the next token)."""

    @abc.abstractmethod
    def gather(self, path: list[int]) -> CachedPrefix | None:
        """The keys and values of what is still cached of `path` (evictions since `find`
        may have cut its tail); None when nothing is."""

    @abc.abstractmethod
    def count_hits(self, job: PrefillJob) -> None:
        """A prefill job starts: count the columns its rows did not have to compute."""

    @abc.abstractmethod
    def evict_for(self, num_blocks: int) -> None:
        """Evict cached prefixes until `num_blocks` blocks are free (or none is cached)."""

    @abc.abstractmethod
    def hold_cached_blocks(self) -> None:
        """Hold exactly the cached blocks in the budget, under PREFIX_CACHE_HOLDER (after
        the engine cleared the budget, the cached prefixes stay: they are still right)."""

    @abc.abstractmethod
    def keep_job(self, job: PrefillJob, contexts: list[list[int]]) -> None:
        """Keep the whole blocks of a finished prefill job's contexts (one per row)."""

    @abc.abstractmethod
    def keep_batch_rows(self, batch: BatchCache, rows: list[tuple[str, list[int]]]) -> None:
        """Keep what batch rows computed: `(request id, token ids in its row's cache)` each."""

    @abc.abstractmethod
    def resize(self, block_size: int) -> None:
        """Adopt the kernel's block size: cached blocks of another size are dropped."""

    @property
    @abc.abstractmethod
    def num_cached_blocks(self) -> int: ...

    @property
    @abc.abstractmethod
    def report_version(self) -> int:
        """Changes whenever what `reported_hashes` says changes."""

    @abc.abstractmethod
    def reported_hashes(self) -> list[int]:
        """Character-block hashes of the cached prefixes' text, for the kernel's prefix index."""


def make_prefix_caching(is_enabled: bool, budget: KvBudget, num_layers: int, tokenizer: Any) -> PrefixCaching:
    if is_enabled:
        return PrefixCachingOn(budget, num_layers, tokenizer)
    return PrefixCachingOff()


class PrefixCachingOff(PrefixCaching):
    is_enabled = False

    def __init__(self) -> None:
        self.num_hit_tokens = 0

    def find(self, context_token_ids: list[int]) -> list[int]:
        return []

    def gather(self, path: list[int]) -> CachedPrefix | None:
        return None

    def count_hits(self, job: PrefillJob) -> None:
        pass

    def evict_for(self, num_blocks: int) -> None:
        pass

    def hold_cached_blocks(self) -> None:
        pass

    def keep_job(self, job: PrefillJob, contexts: list[list[int]]) -> None:
        pass

    def keep_batch_rows(self, batch: BatchCache, rows: list[tuple[str, list[int]]]) -> None:
        pass

    def resize(self, block_size: int) -> None:
        pass

    @property
    def num_cached_blocks(self) -> int:
        return 0

    @property
    def report_version(self) -> int:
        return 0

    def reported_hashes(self) -> list[int]:
        return []


class PrefixCachingOn(PrefixCaching):
    is_enabled = True

    def __init__(self, budget: KvBudget, num_layers: int, tokenizer: Any) -> None:
        self.budget = budget  # the engine's: this object writes only its own line
        self.tokenizer = tokenizer  # the engine thread's, for the text hashes of kept prefixes
        self.cache = PrefixCache(budget.block_size, num_layers)
        self.num_hit_tokens = 0

    # ---------------------------------------------------------------- lookup

    def find(self, context_token_ids: list[int]) -> list[int]:
        return self.cache.match(context_token_ids, len(context_token_ids) - 1)

    def gather(self, path: list[int]) -> CachedPrefix | None:
        path = self.cache.still_cached(path)
        return self.cache.gather(path) if path else None

    def count_hits(self, job: PrefillJob) -> None:
        self.num_hit_tokens += sum(max(job.num_done - pad, 0) for pad in job.pad_lengths)

    # ---------------------------------------------------------------- the budget

    def evict_for(self, num_blocks: int) -> None:
        missing = num_blocks - self.budget.num_free_blocks
        if missing > 0 and len(self.cache):
            self.cache.evict(missing)
            self.hold_cached_blocks()

    def hold_cached_blocks(self) -> None:
        self.budget.free(PREFIX_CACHE_HOLDER)
        if len(self.cache):
            self.budget.hold(PREFIX_CACHE_HOLDER, len(self.cache) * self.budget.block_size)

    def resize(self, block_size: int) -> None:
        if block_size != self.cache.block_size:
            self.cache.resize(block_size)
            self.budget.free(PREFIX_CACHE_HOLDER)

    # ---------------------------------------------------------------- keeping

    @torch.inference_mode()
    def keep_job(self, job: PrefillJob, contexts: list[list[int]]) -> None:
        self.keep(
            [
                (context, row, pad)
                for row, (context, pad) in enumerate(zip(contexts, job.pad_lengths, strict=True))
            ],
            [(layer.keys, layer.values) for layer in job.cache.layers],
        )

    @torch.inference_mode()
    def keep_batch_rows(self, batch: BatchCache, rows: list[tuple[str, list[int]]]) -> None:
        """The contexts of newcomers just prefilled in the batch (a mixed step), and of
        requests leaving it: finished ones' prompts and answers (the next turn of a chat
        starts with both), preempted ones' contexts (for their resume)."""
        entries = [
            (token_ids, row, batch.starts[row])
            for request_id, token_ids in rows
            for row in [batch.row_ids.index(request_id)]
        ]
        if entries:
            self.keep(entries, [(layer.keys, layer.values) for layer in batch.layers])

    def keep(self, entries: list[KeepEntry], layers: list[LayerKeysValues]) -> None:
        """Keep the whole blocks of each entry's tokens, in blocks nobody holds: older
        cached prefixes give way to these, running requests never do.

        `layers`: per layer, the keys and values `[rows, kv_heads, columns, head_dim]`
        of a cache; entry `(token_ids, row, column)` has its first token at `column` of
        `row`. The new blocks of every entry are copied in one concatenation per layer."""
        cache, size = self.cache, self.budget.block_size
        room = self.budget.num_free_blocks + len(cache)
        plans, spans = [], []  # spans: (row, first column, end column) of each entry's new blocks
        num_new = 0
        for token_ids, row, column in entries:
            plan = cache.plan(token_ids)
            plan.num_new = min(plan.num_new, max(room - num_new, 0))
            num_new += plan.num_new
            first = column + plan.first_new * size
            if plan.num_new:
                spans.append((row, first, first + plan.num_new * size))
            plans.append(plan)
        gathered: list[LayerKeysValues] = []
        if spans:  # [kv_heads, new tokens of every entry, head_dim] per layer, one copy each
            gathered = [
                (
                    torch.cat([keys[row, :, a:b] for row, a, b in spans], dim=1),
                    torch.cat([values[row, :, a:b] for row, a, b in spans], dim=1),
                )
                for keys, values in layers
            ]
        offset = 0
        for plan in plans:
            width = plan.num_new * size
            cache.add(
                plan,
                gathered,
                lambda num_tokens, token_ids=plan.token_ids: prompt_block_hashes(
                    self.tokenizer.decode(token_ids[:num_tokens], skip_special_tokens=True)
                ),
                first_column=offset,
            )
            offset += width
        if len(cache) > room:
            cache.evict(len(cache) - room)  # the least recently used, never the new ones first
        self.hold_cached_blocks()

    # ---------------------------------------------------------------- report

    @property
    def num_cached_blocks(self) -> int:
        return len(self.cache)

    @property
    def report_version(self) -> int:
        return self.cache.version

    def reported_hashes(self) -> list[int]:
        return self.cache.reported_hashes()
