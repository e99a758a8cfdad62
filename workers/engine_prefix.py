"""Prefix caching for the batched engine: what it looks up, keeps and evicts.

A mixin of `workers.batched_engine.BatchedEngine`, which owns the state it
uses: `prefix_cache` (a `workers.prefix_cache.PrefixCache`, or None when off),
`budget` (the KV budget, where the cached blocks hold one line,
PREFIX_CACHE_HOLDER), `runner` (its batch cache), `tokenizer` and `model`.

Cached blocks use only blocks nobody holds: `make_room` evicts them before the
engine preempts anyone, and `cache_prefixes` lets older cached prefixes give
way to newer ones, never running requests.
"""

from __future__ import annotations

import torch

from llmos.prefix import prompt_block_hashes
from workers.batch_sequence import Sequence
from workers.model_runner import PrefillJob
from workers.prefix_cache import LayerKeysValues

PREFIX_CACHE_HOLDER = "\0prefix-cache"  # the cached blocks' line in the KV budget (no request id)


class PrefixCaching:
    def cached_prefix(self, sequence: Sequence) -> list[int]:
        """Block hashes of the longest cached prefix of the request's context; at least
        its last token is left to compute (its logits give the next token)."""
        if self.prefix_cache is None:
            return []
        return self.prefix_cache.match(sequence.context_token_ids(), sequence.num_context_tokens - 1)

    def make_room(self, num_blocks: int) -> None:
        """Evict cached prefixes until `num_blocks` blocks are free (or none is cached)."""
        cache = self.prefix_cache
        missing = num_blocks - self.budget.num_free_blocks
        if cache is not None and missing > 0 and len(cache):
            cache.evict(missing)
            self.sync_cache_budget()

    def sync_cache_budget(self) -> None:
        """Hold exactly the cached blocks in the budget, under PREFIX_CACHE_HOLDER."""
        self.budget.free(PREFIX_CACHE_HOLDER)
        if self.prefix_cache is not None and len(self.prefix_cache):
            self.budget.hold(PREFIX_CACHE_HOLDER, len(self.prefix_cache) * self.budget.block_size)

    def cache_prefixes(self, entries: list[tuple[list[int], int, int]],
                       layers: list[LayerKeysValues]) -> None:
        """Keep the whole blocks of each entry's tokens, in blocks nobody holds: older
        cached prefixes give way to these, running requests never do.

        `layers`: per layer, the keys and values `[rows, kv_heads, columns, head_dim]`
        of a cache; entry `(token_ids, row, column)` has its first token at `column` of
        `row`. The new blocks of every entry are copied in one concatenation per layer."""
        cache, size = self.prefix_cache, self.budget.block_size
        room = self.budget.num_free_blocks + len(cache)
        plans, spans = [], []   # spans: (row, first column, end column) of each entry's new blocks
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
            gathered = [(torch.cat([keys[row, :, a:b] for row, a, b in spans], dim=1),
                         torch.cat([values[row, :, a:b] for row, a, b in spans], dim=1))
                        for keys, values in layers]
        offset = 0
        for plan in plans:
            width = plan.num_new * size
            cache.add(plan, gathered,
                      lambda num_tokens, token_ids=plan.token_ids: prompt_block_hashes(
                          self.tokenizer.decode(token_ids[:num_tokens], skip_special_tokens=True)),
                      first_column=offset)
            offset += width
        if len(cache) > room:
            cache.evict(len(cache) - room)  # the least recently used, never the new ones first
        self.sync_cache_budget()

    def cache_job_prefixes(self, job: PrefillJob, sequences: list[Sequence]) -> None:
        self.cache_prefixes([(sequence.context_token_ids(), row, pad)
                             for row, (sequence, pad) in enumerate(zip(sequences, job.pad_lengths))],
                            [(layer.keys, layer.values) for layer in job.cache.layers])

    def cache_batch_rows(self, sequences: list[Sequence]) -> None:
        """What these batch rows computed: the contexts of newcomers just prefilled in the
        batch (a mixed step), and of requests leaving it: finished ones' prompts and answers
        (the next turn of a chat starts with both), preempted ones' contexts (for their resume)."""
        batch = self.runner.batch
        entries = [(s.context_token_ids()[:s.num_cached_tokens], row, batch.starts[row])
                   for s in sequences if s.request_id in batch.row_ids
                   for row in [batch.row_ids.index(s.request_id)]]
        if entries:
            self.cache_prefixes(entries, [(layer.keys, layer.values) for layer in batch.layers])

    @property
    def prefix_report_version(self) -> int:
        return self.prefix_cache.version if self.prefix_cache is not None else 0

    def cached_prefix_hashes(self) -> list[int]:
        """Character-block hashes of the cached prefixes' text, for the kernel's prefix index."""
        return self.prefix_cache.reported_hashes() if self.prefix_cache is not None else []
