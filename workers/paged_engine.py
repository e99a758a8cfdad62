"""The paged engine: continuous batching over a physical paged KV cache.

Where the batched engine (`workers.batched_engine`) keeps every running request
in a row of one padded cache, as wide as its longest context, this one keeps
each request's keys and values in blocks of the kernel's size
(`workers.paged_cache`), placed by a block table (`workers.paged_blocks`): the
memory a request holds is the blocks the kernel counts for it, and a cached
prefix is shared by block id, never copied.

Every `step()` is schedule -> execute -> postprocess, and returns what changed:
- schedule: every decoding request must be able to store one more token within
  the grant; where it cannot, the least important request (highest `priority`,
  then latest arrival) is preempted by recompute (its blocks go back, the full
  ones stay in the prefix cache, and it waits at the front of the queue). Then
  prefill chunks fill the rest of the step's token budget
  (`max_num_batched_tokens`, decodes first): the requests part-way through
  their prefill, then, when nobody was preempted, waiting requests in order,
  while slots and blocks allow. A newcomer starts with the cached blocks its
  context begins with, and holds blocks for its whole context from its start.
- execute: one packed forward for every decode and every prefill chunk
  (`workers.paged_runner`); nothing is padded.
- postprocess: sample for the decodes and the prefills that finished, index the
  blocks that filled up, stream the new text, free finished requests at once.

Greedy output equals `model.generate` on the prompt alone, token for token. Only
models whose attention the paged forward computes run here (`supports_paged`).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from llmos.wire.constants import DEFAULT_BLOCK_SIZE
from workers import cpu_kernels
from workers.batch_sequence import Sequence, SequenceStatus
from workers.config import DEFAULT_MAX_NUM_BATCHED_TOKENS
from workers.cuda_graphs import GRAPH_FAMILIES
from workers.engine_core import EngineCore
from workers.kv_dtype import resolve_kv_cache_dtype
from workers.mixed_step import MIXED_STEP_FAMILIES, supports_mixed_steps
from workers.model_facts import has_full_attention
from workers.paged_blocks import PagedBlocks
from workers.paged_runner import PagedRow, PagedRunner
from workers.requests import Delta

log = logging.getLogger(__name__)


def supports_paged(model: Any, max_model_len: int) -> bool:
    """What a packed forward over blocks computes exactly: a family whose attention layers
    hand the attention function all it needs, with plain full attention."""
    return supports_mixed_steps(model) and has_full_attention(model, max_model_len)


class PagedEngine(EngineCore):
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_num_seqs: int = 16,
        max_model_len: int = 0,
        eos_token_ids: set[int] | None = None,
        worker_id: str = "",
        num_blocks: int = 0,
        block_size: int = DEFAULT_BLOCK_SIZE,
        max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS,
        prefix_caching: bool = True,
        cpu_weights: str = "fast",
        release_unused_weights: bool = False,
        kv_cache_dtype: str = "auto",
        cuda_graphs: bool = False,
    ) -> None:
        """`num_blocks = 0`: enough blocks for `max_num_seqs` requests of `max_model_len` tokens.
        `cuda_graphs`: decode steps replayed as CUDA graphs (workers.cuda_graphs; a CUDA model)."""
        super().__init__(
            model,
            tokenizer,
            max_num_seqs=max_num_seqs,
            max_model_len=max_model_len,
            eos_token_ids=eos_token_ids,
            worker_id=worker_id,
            max_num_batched_tokens=max_num_batched_tokens,
        )
        if not supports_paged(model, self.max_model_len):
            families = ", ".join(sorted(MIXED_STEP_FAMILIES))
            raise ValueError(
                f"the paged engine runs {families} models with full attention, not "
                f"{getattr(model.config, 'model_type', '?')}; use the batched engine"
            )
        if cuda_graphs and model.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device; the model is on {model.device.type}")
        if model.device.type == "cpu":
            cpu_kernels.has_kernels()  # built now (once per machine), not at the first request
        num_blocks = num_blocks or math.ceil(max_num_seqs * self.max_model_len / block_size)
        kv_dtype = resolve_kv_cache_dtype(kv_cache_dtype, model.dtype)
        self.runner = PagedRunner(
            model,
            num_blocks,
            block_size,
            cpu_weights,
            release_unused_weights,
            kv_dtype,
            graph_rows=max_num_seqs if cuda_graphs else 0,
        )
        if cuda_graphs and self.runner.graphs is None:
            log.warning(
                "worker %s: no CUDA graphs for %s models (workers.cuda_graphs takes %s); "
                "decode steps run the regular forward",
                worker_id,
                getattr(model.config, "model_type", "?"),
                ", ".join(sorted(GRAPH_FAMILIES)),
            )
        self.runner.capture_graphs(self.max_model_len)  # before serving: no step waits for a capture
        self.budget: PagedBlocks = PagedBlocks(
            self.runner.cache.blocks, block_size, tokenizer, prefix_caching
        )

    # ---------------------------------------------------------------- the KV budget

    def set_kv_budget(self, num_blocks: int, block_size: int) -> None:
        """Adopt the kernel's block geometry. Another block size empties the cache (every
        running request waits to be computed again); a smaller grant preempts at the next step."""
        if block_size == self.budget.block_size:
            self.budget.pool.resize(num_blocks)
            return
        for sequence in sorted(self.running.values(), key=lambda s: s.arrival_seq, reverse=True):
            self.preempt_by_recompute(sequence)  # the earliest ends up at the front
        old = self.budget
        self.runner.reset(num_blocks, block_size)
        self.budget = PagedBlocks(self.runner.cache.blocks, block_size, self.tokenizer, old.is_enabled)
        self.budget.version = old.version + 1  # what the index reports changed
        self.budget.num_hit_tokens = old.num_hit_tokens

    # ---------------------------------------------------------------- state

    @property
    def prefix_caching(self) -> PagedBlocks:
        """Where the prefix cache's counters are (`num_hit_tokens`, `is_enabled`)."""
        return self.budget

    def kv_usage(self) -> tuple[int, int]:
        """(bytes the KV pools hold, tokens live in them)."""
        return self.runner.cache.num_bytes, self.num_cached_tokens

    @property
    def num_prefix_cache_blocks(self) -> int:
        return self.budget.num_cached_blocks

    @property
    def num_request_blocks(self) -> int:
        return self.budget.num_request_blocks

    @property
    def prefix_report_version(self) -> int:
        return self.budget.version

    def cached_prefix_hashes(self) -> list[int]:
        """Character-block hashes of the cached prefixes' text, for the kernel's prefix index."""
        return self.budget.reported_hashes()

    def decoding(self) -> list[Sequence]:
        return [s for s in self.running.values() if s.status is SequenceStatus.DECODING]

    # ---------------------------------------------------------------- the step

    def step(self) -> list[Delta]:
        """Schedule, run every decode and prefill chunk in one forward, return what changed."""
        deltas, self.pending_deltas = self.pending_deltas, []
        has_preempted = self.reserve_decode_tokens()
        decodes = self.decoding()
        prefills = self.schedule_prefills(len(decodes), has_preempted)
        if not decodes and not prefills:
            return deltas
        rows = [
            PagedRow(self.budget.block_ids(s.request_id), s.num_cached_tokens, s.generated_token_ids[-1:])
            for s in decodes
        ]
        for sequence, num_tokens in prefills:
            start = sequence.num_cached_tokens
            token_ids = sequence.context_token_ids()[start : start + num_tokens]
            rows.append(PagedRow(self.budget.block_ids(sequence.request_id), start, token_ids))
        try:
            logits = self.runner.forward(rows)
        except Exception as exc:  # e.g. out of memory: these requests fail, the engine goes on
            return deltas + self.fail_sequences(decodes + [s for s, _ in prefills], exc)
        return deltas + self.postprocess(decodes, prefills, logits)

    def reserve_decode_tokens(self) -> bool:
        """Let every decoding request store one more token, most important first,
        preempting the least important where the grant does not allow; True if any was."""
        has_preempted = False
        while self.budget.is_over_budget:  # the kernel's grant shrank
            self.preempt_by_recompute(self.pick_victim())
            has_preempted = True
        for sequence in sorted(self.decoding(), key=lambda s: s.preemption_order):
            num_tokens = sequence.num_cached_tokens + 1
            while sequence.status is SequenceStatus.DECODING and not self.budget.can_hold(
                sequence.request_id, num_tokens
            ):
                self.preempt_by_recompute(self.pick_victim())
                has_preempted = True
            if sequence.status is SequenceStatus.DECODING:
                self.budget.hold(sequence.request_id, num_tokens)
        return has_preempted

    def schedule_prefills(self, num_decodes: int, has_preempted: bool) -> list[tuple[Sequence, int]]:
        """(request, tokens to compute this step) for the prefills that run: those under
        way first, then newcomers in order (none in a step that preempted)."""
        num_tokens_left = self.prefill_tokens_left(num_decodes)
        chosen: list[tuple[Sequence, int]] = []
        for sequence in self.running.values():
            if sequence.status is SequenceStatus.PREFILLING and num_tokens_left > 0:
                num_tokens = min(sequence.num_context_tokens - sequence.num_cached_tokens, num_tokens_left)
                chosen.append((sequence, num_tokens))
                num_tokens_left -= num_tokens
        while (
            not has_preempted
            and self.waiting
            and num_tokens_left > 0
            and self.num_running < self.max_num_seqs
        ):
            sequence = self.waiting[0]
            if not self.budget.can_ever_hold(sequence.num_context_tokens + 1):
                self.pending_deltas.append(self.refuse(sequence))
                continue
            context = sequence.context_token_ids()
            hit = self.budget.find(context)
            if not self.budget.can_hold(sequence.request_id, len(context) + 1, hit):
                break  # in order: nobody overtakes the head
            self.waiting.popleft()
            self.budget.start(sequence.request_id, hit)
            self.budget.hold(sequence.request_id, len(context))
            sequence.num_cached_tokens = len(hit.block_ids) * self.budget.block_size
            sequence.move_to(SequenceStatus.PREFILLING)
            self.running[sequence.request_id] = sequence
            num_tokens = min(len(context) - sequence.num_cached_tokens, num_tokens_left)
            chosen.append((sequence, num_tokens))
            num_tokens_left -= num_tokens
        return chosen

    def postprocess(
        self, decodes: list[Sequence], prefills: list[tuple[Sequence, int]], logits: Any
    ) -> list[Delta]:
        """Count what the forward computed, index the blocks that filled up, and sample for
        the decodes and the prefills it finished (their logits' rows)."""
        for sequence in decodes:
            sequence.num_cached_tokens += 1
        sampled = list(decodes)
        rows = list(range(len(decodes)))
        for row, (sequence, num_tokens) in enumerate(prefills, start=len(decodes)):
            sequence.num_cached_tokens += num_tokens
            if sequence.num_cached_tokens == sequence.num_context_tokens:
                sequence.move_to(SequenceStatus.DECODING)
                sampled.append(sequence)
                rows.append(row)
        for sequence in [*decodes, *(s for s, _ in prefills)]:
            self.budget.index_computed(
                sequence.request_id, sequence.num_cached_tokens, sequence.context_token_ids
            )
        for sequence in sampled[len(decodes) :]:  # a prefill's prompt: report it
            self.budget.keep_text_hashes(sequence.request_id, sequence.context_token_ids())
        if len(rows) < logits.shape[0]:
            logits = logits[rows]
        return self.append_tokens(sampled, logits)

    # ---------------------------------------------------------------- leaving

    def keep_computed(self, sequences: list[Sequence]) -> None:
        """Their computed blocks are indexed already (each step): report the longest prefixes."""
        for sequence in sequences:
            if sequence.holds_kv:
                self.budget.keep_text_hashes(sequence.request_id, sequence.context_token_ids())

    def clear_kv(self) -> None:
        self.budget.free_all()

    def release(self, sequence: Sequence, status: SequenceStatus) -> None:
        """Give the request's blocks back (its full ones stay cached) and move it to
        `status` (back to the front of the queue, for WAITING)."""
        assert sequence.holds_kv, f"request {sequence.request_id} is {sequence.status.name}"
        del self.running[sequence.request_id]
        self.budget.free(sequence.request_id)
        sequence.num_cached_tokens = 0
        sequence.move_to(status)
        if status is SequenceStatus.WAITING:
            self.waiting.appendleft(sequence)
