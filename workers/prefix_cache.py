"""Automatic prefix caching for the batched engine, in the style of vLLM's.

The keys and values of whole blocks of context are kept after a request's
prefill (its prompt) and after it finishes (prompt and answer: the next turn of
a chat starts with both), and a later request whose context starts with the
same tokens is prefilled from the end of that prefix instead of from column 0.

A block is `block_size` tokens (the kernel's); its hash chains the previous
block's hash with its own token ids, so one hash names a whole prefix. Each
block keeps, per layer, `block_size` columns of a copy (the batch cache is padded
and moves rows, so blocks cannot point into it): the copy one insert gathered
for all its blocks, which a block names with its first column and slices only
when a lookup gathers it (most kept blocks are never looked up, and on a GPU
every slice of every layer is a call from Python). A block is shared by every
prefix that runs through it. Blocks leave least recently used first, and
leaves before their parents: a lookup or an insert touches its path from the
deepest block up to the root, so no parent is older than its child.

Each cached prefix also keeps the character-block hashes of its text
(`llmos.prefix.prompt_block_hashes`, what the broker computes from a prompt),
which the worker reports to the kernel so the scheduler can send a request to
the worker that holds its prefix. They are computed when first reported, not
when the prefix is kept: that detokenizes the prefix, and the worker reports at
most every 100 ms (`workers.engine_thread`), so when requests come and go fast
most kept prefixes are evicted, or superseded, before any report.

Plain bookkeeping over tensors it is handed; the engine's prefix caching
(`workers.engine_prefix`) decides when to insert (`plan`, then `add` with the new
blocks' keys and values, gathered for many requests at once) and evict, and
counts the blocks in the engine's KV budget.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from llmos.prefix import MAX_PREFIX_BLOCKS

# Character-block hashes one worker reports, at most: 16 prompts of the longest hashed
# length (llmos.prefix.MAX_PREFIX_BLOCKS), many more short ones. The kernel publishes
# every worker's list in each view, so this bounds the view: 8 KiB a worker.
MAX_REPORTED_HASHES = 1024

LayerKeysValues = tuple[torch.Tensor, torch.Tensor]  # one layer's [kv_heads, tokens, head_dim] pair
# deepest block hash of each cached prefix -> the character-block hashes of its text, or
# what computes them (until first reported)
TextHashes = OrderedDict[int, tuple[int, ...] | Callable[[], tuple[int, ...]]]


def next_block_hash(previous: int | None, block_token_ids: Sequence[int]) -> int:
    """The hash of a prefix: the hash of the prefix before its last block, and that block's tokens."""
    return hash((previous, tuple(block_token_ids)))


def reported_text_hashes(text_hashes: TextHashes) -> list[int]:
    """Character-block hashes of every cached prefix's text (most recent first, no
    repeats, at most MAX_REPORTED_HASHES): what the worker tells the kernel."""
    seen: dict[int, None] = {}
    for prefix_hash in reversed(list(text_hashes)):
        block_hashes = text_hashes[prefix_hash]
        if callable(block_hashes):  # first reported: hash its text now, once
            block_hashes = text_hashes[prefix_hash] = block_hashes()
        for block_hash in block_hashes:
            seen.setdefault(block_hash, None)
        if len(seen) >= MAX_REPORTED_HASHES:
            break
    return list(seen)[:MAX_REPORTED_HASHES]


@dataclass
class InsertPlan:
    """Whole blocks of `token_ids`: `path` hashes them all; the first `first_new`
    are cached already; the caller keeps `num_new` of the rest (its room)."""

    token_ids: Sequence[int]
    path: list[int]
    first_new: int
    num_new: int


@dataclass
class CachedBlock:
    keys_values: list[LayerKeysValues]  # per layer, the copy its insert gathered
    first_column: int  # the block's columns there: block_size from this one


class PrefixCache:
    def __init__(self, block_size: int, num_layers: int) -> None:
        assert block_size > 0 and num_layers > 0
        self.block_size = block_size
        self.num_layers = num_layers
        self.blocks: OrderedDict[int, CachedBlock] = OrderedDict()  # least recently used first
        self.text_hashes: TextHashes = OrderedDict()
        self.version = 0  # bumped whenever what the cache reports changes

    def __len__(self) -> int:
        return len(self.blocks)

    # ---------------------------------------------------------------- hashes

    def block_hashes(self, token_ids: Sequence[int], num_blocks: int) -> list[int]:
        hashes: list[int] = []
        previous = None
        size = self.block_size
        for index in range(num_blocks):
            previous = next_block_hash(previous, token_ids[index * size : (index + 1) * size])
            hashes.append(previous)
        return hashes

    # ---------------------------------------------------------------- lookup

    def match(self, token_ids: Sequence[int], max_tokens: int) -> list[int]:
        """Hashes of the longest cached prefix of `token_ids` (whole blocks, at most
        `max_tokens` tokens); the path becomes the most recently used."""
        path = self.still_cached(self.block_hashes(token_ids, max_tokens // self.block_size))
        self.touch(path)
        return path

    def still_cached(self, path: list[int]) -> list[int]:
        """The leading part of a path that is cached (evictions may have cut its tail)."""
        return path[: self.num_cached(path)]

    def num_cached(self, path: list[int]) -> int:
        """How many of the path's first blocks are cached."""
        for index, block_hash in enumerate(path):
            if block_hash not in self.blocks:
                return index
        return len(path)

    def gather(self, path: list[int]) -> list[LayerKeysValues]:
        """The path's keys and values, per layer, as `[kv_heads, tokens, head_dim]` copies."""
        spans = self.spans([self.blocks[block_hash] for block_hash in path])
        return [
            tuple(
                torch.cat(
                    [keys_values[layer][side][:, first:end] for keys_values, first, end in spans], dim=1
                )
                for side in (0, 1)
            )
            for layer in range(self.num_layers)
        ]

    def spans(self, blocks: list[CachedBlock]) -> list[tuple[list[LayerKeysValues], int, int]]:
        """(copy, first column, end column) runs of `blocks`: neighbours that sit side by
        side in one copy make one run, so a gather slices each layer once per run."""
        runs: list[tuple[list[LayerKeysValues], int, int]] = []
        for block in blocks:
            end = block.first_column + self.block_size
            if runs and runs[-1][0] is block.keys_values and runs[-1][2] == block.first_column:
                runs[-1] = (block.keys_values, runs[-1][1], end)
            else:
                runs.append((block.keys_values, block.first_column, end))
        return runs

    # ---------------------------------------------------------------- insert and evict

    def plan(self, token_ids: Sequence[int]) -> InsertPlan:
        """What keeping `token_ids` would add: its whole blocks past those cached
        already (which become the most recently used)."""
        path = self.block_hashes(token_ids, len(token_ids) // self.block_size)
        num_cached = self.num_cached(path)
        self.touch(path[:num_cached])
        return InsertPlan(token_ids, path, num_cached, len(path) - num_cached)

    def add(
        self,
        plan: InsertPlan,
        keys_values: list[LayerKeysValues],
        text_hashes: Callable[[int], list[int]],
        first_column: int = 0,
    ) -> None:
        """Keep the plan's first `num_new` new blocks. `keys_values`: per layer, keys and
        values `[kv_heads, columns, head_dim]` holding those blocks' tokens side by side
        from `first_column` on, copies the cache may keep (several inserts may share
        one); `text_hashes(n)`: the character-block hashes of the text of the first `n` tokens
        (called only if the prefix is still cached when reported)."""
        size, first = self.block_size, plan.first_new
        for offset in range(plan.num_new):
            self.blocks[plan.path[first + offset]] = CachedBlock(keys_values, first_column + offset * size)
        path = plan.path[: first + plan.num_new]
        self.touch(path)
        if path and path[-1] not in self.text_hashes:
            num_tokens = len(path) * size
            self.text_hashes[path[-1]] = lambda: tuple(text_hashes(num_tokens)[:MAX_PREFIX_BLOCKS])
            self.version += 1
        if path:
            self.text_hashes.move_to_end(path[-1])

    def touch(self, path: list[int]) -> None:
        for block_hash in reversed(path):  # the root ends up the most recent
            self.blocks.move_to_end(block_hash)

    def evict(self, num_blocks: int) -> int:
        """Drop up to `num_blocks` least recently used blocks; return how many went."""
        num_evicted = 0
        while num_evicted < num_blocks and self.blocks:
            block_hash, _ = self.blocks.popitem(last=False)
            if self.text_hashes.pop(block_hash, None) is not None:
                self.version += 1
            num_evicted += 1
        return num_evicted

    def clear(self) -> None:
        if self.blocks or self.text_hashes:
            self.version += 1
        self.blocks.clear()
        self.text_hashes.clear()

    def resize(self, block_size: int) -> None:
        """Drop every block (they have the old size); blocks have `block_size` tokens from now on."""
        assert block_size > 0
        self.clear()
        self.block_size = block_size

    # ---------------------------------------------------------------- report

    def reported_hashes(self) -> list[int]:
        return reported_text_hashes(self.text_hashes)
