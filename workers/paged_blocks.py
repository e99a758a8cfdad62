"""The paged engine's KV blocks: each request's block table, and the prefix cache.

Plain bookkeeping over block ids (`workers.paged_cache.BlockPool` hands them out
and counts their holders); the tensors are the runner's. Check, then act:
`can_hold(request_id, num_tokens)` before a step adds tokens to a request,
`hold` after, which asserts what the check promised; `free` gives a request's
blocks back.

Prefix caching, as in vLLM v1: once a block of a request's context is full and
computed, it is indexed by a hash that chains the hash of the blocks before it
with its own token ids (one hash names a whole prefix), and the index holds one
reference to it. A newcomer whose context starts with indexed blocks shares them
(one more reference each: no copy) and is computed from their end. When the last
request holding an indexed block leaves, the block stays, idle, holding its keys
and values; idle blocks count as free: they are evicted (least recently used
first) whenever a request needs a block and no other is free, so they only ever
use blocks nobody needs.

The index also keeps, per cached prefix, the character-block hashes of its text,
which the worker reports to the kernel for prefix-aware placement (computed when
first reported, as `workers.prefix_cache` does).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmos.prefix import MAX_PREFIX_BLOCKS, prompt_block_hashes
from workers.paged_cache import BlockPool
from workers.prefix_cache import TextHashes, next_block_hash, reported_text_hashes


@dataclass
class BlockTable:
    block_ids: list[int] = field(default_factory=list)  # token p sits in block_ids[p // block_size]
    num_indexed: int = 0  # leading blocks in the prefix index (full and computed)
    last_hash: int | None = None  # the prefix hash of block num_indexed - 1


@dataclass
class PrefixHit:
    """The indexed blocks a context starts with (shared when the request starts)."""

    block_ids: list[int]
    last_hash: int | None


NO_HIT = PrefixHit([], None)


class PagedBlocks:
    def __init__(self, pool: BlockPool, block_size: int, tokenizer: Any, prefix_caching: bool) -> None:
        self.pool = pool
        self.block_size = block_size
        self.tokenizer = tokenizer  # the engine thread's, for the text hashes of cached prefixes
        self.is_enabled = prefix_caching
        self.tables: dict[str, BlockTable] = {}
        self.indexed_ids: dict[int, int] = {}  # prefix hash -> block id
        self.block_hashes: dict[int, int] = {}  # block id -> prefix hash, for indexed blocks
        self.idle_ids: OrderedDict[int, None] = OrderedDict()  # indexed, nobody else holds them; LRU first
        self.text_hashes: TextHashes = OrderedDict()
        self.version = 0  # bumped whenever what the index reports changes
        self.num_hit_tokens = 0  # tokens that prefills did not have to compute

    # ---------------------------------------------------------------- sizes

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    def blocks_for(self, num_tokens: int) -> int:
        return math.ceil(num_tokens / self.block_size)

    def can_ever_hold(self, num_tokens: int) -> bool:
        """Whether one request of `num_tokens` fits the whole budget."""
        return self.blocks_for(num_tokens) <= self.num_blocks

    @property
    def num_free_blocks(self) -> int:
        """Blocks a request may take: free ones and idle cached ones, within the grant."""
        return max(self.num_blocks - self.num_request_blocks, 0)

    @property
    def num_cached_blocks(self) -> int:
        """Blocks only the prefix cache holds."""
        return len(self.idle_ids)

    @property
    def num_request_blocks(self) -> int:
        """Blocks requests hold (a block two requests share counts once)."""
        return self.pool.num_used_blocks - len(self.idle_ids)

    @property
    def is_over_budget(self) -> bool:
        """True only after the grant shrank below what requests hold."""
        return self.num_request_blocks > self.num_blocks

    # ---------------------------------------------------------------- check, then act

    def num_blocks_to_add(self, request_id: str, num_tokens: int, hit: PrefixHit = NO_HIT) -> int:
        table = self.tables.get(request_id)
        num_held = len(table.block_ids) if table is not None else len(hit.block_ids)
        return max(self.blocks_for(num_tokens) - num_held, 0)

    def can_hold(self, request_id: str, num_tokens: int, hit: PrefixHit = NO_HIT) -> bool:
        """Whether the request can hold `num_tokens` tokens in all (a newcomer: starting with `hit`)."""
        num_idle_hits = sum(block_id in self.idle_ids for block_id in hit.block_ids)
        return self.num_blocks_to_add(request_id, num_tokens, hit) <= self.num_free_blocks - num_idle_hits

    def start(self, request_id: str, hit: PrefixHit) -> None:
        """A request starts holding KV, with the blocks of its cached prefix."""
        assert request_id not in self.tables, f"request {request_id} holds blocks already"
        self.pool.share(hit.block_ids)
        for block_id in hit.block_ids:
            self.idle_ids.pop(block_id, None)
        self.tables[request_id] = BlockTable(list(hit.block_ids), len(hit.block_ids), hit.last_hash)
        self.num_hit_tokens += len(hit.block_ids) * self.block_size

    def hold(self, request_id: str, num_tokens: int) -> None:
        """Grow the request's table to cover `num_tokens` tokens, evicting idle cached blocks
        where no block is free."""
        table = self.tables[request_id]
        num_added = self.num_blocks_to_add(request_id, num_tokens)
        assert num_added <= self.num_free_blocks, (
            f"request {request_id} needs {num_added} more KV blocks, {self.num_free_blocks} free: "
            f"check can_hold"
        )
        self.evict(self.pool.num_used_blocks + num_added - self.num_blocks)
        table.block_ids += self.pool.allocate(num_added)

    def free(self, request_id: str) -> None:
        """Give back every block of the request; indexed ones stay, idle."""
        table = self.tables.pop(request_id, None)
        if table is None:
            return
        self.pool.release(table.block_ids)
        for block_id in reversed(table.block_ids):  # the first block ends up the most recent
            if block_id in self.block_hashes and self.pool.ref_counts[block_id] == 1:
                self.idle_ids[block_id] = None
                self.idle_ids.move_to_end(block_id)

    def free_all(self) -> None:
        for request_id in list(self.tables):
            self.free(request_id)

    def evict(self, num_blocks: int) -> None:
        """Evict up to `num_blocks` idle cached blocks, least recently used first."""
        for _ in range(min(max(num_blocks, 0), len(self.idle_ids))):
            block_id, _ = self.idle_ids.popitem(last=False)
            prefix_hash = self.block_hashes.pop(block_id)
            del self.indexed_ids[prefix_hash]
            if self.text_hashes.pop(prefix_hash, None) is not None:
                self.version += 1
            self.pool.release([block_id])

    # ---------------------------------------------------------------- the prefix index

    def find(self, context_token_ids: Sequence[int]) -> PrefixHit:
        """The indexed blocks the context starts with; at least its last token is left to
        compute (its logits give the next token)."""
        if not self.is_enabled:
            return NO_HIT
        block_ids: list[int] = []
        previous = None
        size = self.block_size
        for index in range((len(context_token_ids) - 1) // size):
            prefix_hash = next_block_hash(previous, context_token_ids[index * size : (index + 1) * size])
            block_id = self.indexed_ids.get(prefix_hash)
            if block_id is None:
                break
            block_ids.append(block_id)
            previous = prefix_hash
        return PrefixHit(block_ids, previous)

    def index_computed(
        self, request_id: str, num_computed: int, context_token_ids: Callable[[], Sequence[int]]
    ) -> None:
        """Index the request's blocks that are full and computed and not indexed yet (the
        context is asked for only when there are some). A prefix another block is indexed
        under already keeps that block."""
        table, size = self.tables[request_id], self.block_size
        if not self.is_enabled or num_computed // size <= table.num_indexed:
            return
        token_ids = context_token_ids()
        for index in range(table.num_indexed, num_computed // size):
            prefix_hash = next_block_hash(table.last_hash, token_ids[index * size : (index + 1) * size])
            block_id = table.block_ids[index]
            if prefix_hash not in self.indexed_ids:
                self.indexed_ids[prefix_hash] = block_id
                self.block_hashes[block_id] = prefix_hash
                self.pool.share([block_id])  # the index's own reference
            table.num_indexed, table.last_hash = index + 1, prefix_hash

    def keep_text_hashes(self, request_id: str, context_token_ids: Sequence[int]) -> None:
        """Report the request's indexed prefix (after its prefill, when it leaves)."""
        table = self.tables.get(request_id)
        if table is None or table.last_hash is None or table.last_hash not in self.indexed_ids:
            return
        if table.last_hash not in self.text_hashes:
            token_ids = list(context_token_ids[: table.num_indexed * self.block_size])
            self.text_hashes[table.last_hash] = lambda: tuple(
                prompt_block_hashes(self.tokenizer.decode(token_ids, skip_special_tokens=True))[
                    :MAX_PREFIX_BLOCKS
                ]
            )
            self.version += 1
        self.text_hashes.move_to_end(table.last_hash)

    def reported_hashes(self) -> list[int]:
        return reported_text_hashes(self.text_hashes)

    def block_ids(self, request_id: str) -> list[int]:
        return self.tables[request_id].block_ids
