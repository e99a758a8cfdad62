"""The batched engine: iteration-level (continuous) batching, as in Orca and vLLM.

Every `step()` is schedule -> execute -> postprocess, and returns what changed:
- schedule: every running row must be able to store one more token within the
  KV budget (in blocks of the kernel's size); where it cannot, the least
  important row (highest `priority`, then latest arrival) is preempted by
  recompute: its cache is freed and it goes back to the front of the queue
  with its generated tokens, to be prefilled again (prompt + generated) later.
  When nobody was preempted and no prefill is under way, waiting requests
  start, in order, while slots, blocks and the step's token budget allow.
- execute: one forward for the whole running batch (one token per row) and
  the newcomers' prefill, when this step finishes it (a mixed step,
  `workers.mixed_step`: the newcomers join the batch in that forward); else
  one forward for the batch and one for the next chunk of the prefill
  (`workers.model_runner`). Decodes come first in the token budget
  (`max_num_batched_tokens`); the prefill gets the rest, so newcomers stall
  running requests by one bounded chunk per step at most.
- postprocess: sample, stream the new text, free finished requests at once.

Each request's status (`workers.batch_sequence.SequenceStatus`) says where it
is: WAITING in the queue, PREFILLING in the prefill job, DECODING in the batch.

Prefix caching (`workers.engine_prefix`, which the engine holds and calls; its
blocks in `workers.prefix_cache`): after a prefill, and when a request finishes,
the whole blocks of its context are kept; newcomers whose contexts start with
cached blocks are prefilled together, from the end of their prefixes. Cached blocks count in the KV budget
but give way first: they are evicted before any request is preempted, so they
only ever use blocks nobody needs.

Greedy output equals `model.generate` on the prompt alone, token for token,
also for a request preempted and resumed (here or, via `Dispatch`, elsewhere).
Like the reference engine (`workers.reference_engine`), it knows no sockets or
threads.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from llmos.wire.constants import DEFAULT_BLOCK_SIZE
from workers.batch_sequence import Sequence, SequenceStatus
from workers.config import DEFAULT_MAX_NUM_BATCHED_TOKENS
from workers.engine_core import EngineCore
from workers.engine_prefix import PREFIX_CACHE_HOLDER, make_prefix_caching
from workers.kv_budget import KvBudget
from workers.model_facts import has_full_attention
from workers.model_runner import CachedPrefix, ModelRunner, PrefillJob
from workers.requests import Delta

log = logging.getLogger(__name__)


class BatchedEngine(EngineCore):
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
        mixed_steps: bool = True,
        cpu_weights: str = "fast",
        release_unused_weights: bool = False,
    ) -> None:
        """`num_blocks = 0`: enough blocks for `max_num_seqs` requests of `max_model_len` tokens.
        `prefix_caching` is ignored for models whose attention is not plain full attention;
        `mixed_steps` (decodes and prefill in one forward) for models that cannot."""
        super().__init__(
            model,
            tokenizer,
            max_num_seqs=max_num_seqs,
            max_model_len=max_model_len,
            eos_token_ids=eos_token_ids,
            worker_id=worker_id,
            max_num_batched_tokens=max_num_batched_tokens,
        )
        self.budget = KvBudget(
            num_blocks or math.ceil(max_num_seqs * self.max_model_len / block_size), block_size
        )
        full_attention = has_full_attention(model, self.max_model_len)
        self.runner = ModelRunner(
            model, max_num_seqs, mixed_steps and full_attention, cpu_weights, release_unused_weights
        )
        self.prefix_caching = make_prefix_caching(
            prefix_caching and full_attention,
            self.budget,
            model.config.get_text_config().num_hidden_layers,
            tokenizer,
        )
        self.job: PrefillJob | None = None  # newcomers being prefilled

    # ---------------------------------------------------------------- the KV budget

    def set_kv_budget(self, num_blocks: int, block_size: int) -> None:
        """Adopt the kernel's block geometry; the next step evicts cached prefixes, then
        preempts, if it is now over budget."""
        self.prefix_caching.resize(block_size)
        self.budget.resize(num_blocks, block_size)

    # ---------------------------------------------------------------- state

    def kv_usage(self) -> tuple[int, int]:
        """(bytes the batch's KV buffers hold, tokens live in them): what the padded
        batch cache costs per token, against the model's own figure per token."""
        return self.runner.batch.num_bytes, self.runner.batch.num_live_tokens

    @property
    def num_prefix_cache_blocks(self) -> int:
        return self.budget.num_blocks_held.get(PREFIX_CACHE_HOLDER, 0)

    @property
    def num_request_blocks(self) -> int:
        """KV blocks held by requests (the budget's use without the cached prefixes)."""
        return self.budget.num_used_blocks - self.num_prefix_cache_blocks

    @property
    def prefix_report_version(self) -> int:
        return self.prefix_caching.report_version

    def cached_prefix_hashes(self) -> list[int]:
        """Character-block hashes of the cached prefixes' text, for the kernel's prefix index."""
        return self.prefix_caching.reported_hashes()

    # ---------------------------------------------------------------- the step

    def step(self) -> list[Delta]:
        """Schedule, run the batch's decodes and a prefill chunk (in one forward where that
        chunk ends the prefill: a mixed step), return what changed."""
        deltas, self.pending_deltas = self.pending_deltas, []
        has_preempted = self.reserve_decode_tokens()
        if not has_preempted and self.job is None:
            self.job = self.start_prefill_job()
        if self.job is not None and self.runner.can_mix(self.job, self.prefill_columns(self.job)):
            return deltas + self.decode_and_prefill()
        deltas += self.decode()
        deltas += self.prefill()
        return deltas

    def reserve_decode_tokens(self) -> bool:
        """Let every batch row store one more token, most important first, preempting
        the least important where the budget does not allow; True if any was preempted."""
        has_preempted = False
        self.prefix_caching.evict_for(0)  # cached prefixes give way first
        while self.budget.is_over_budget:  # the kernel's budget shrank
            self.preempt_by_recompute(self.pick_victim())
            has_preempted = True
        rows = [self.running[request_id] for request_id in self.runner.batch.row_ids]
        growth = [(s.request_id, s.num_cached_tokens + 1) for s in rows]
        num_new_blocks = sum(self.budget.num_blocks_to_add(*g) for g in growth)
        self.prefix_caching.evict_for(num_new_blocks)  # no request's need changes
        if num_new_blocks <= self.budget.num_free_blocks:
            for request_id, num_tokens in growth:  # the usual case: everyone fits
                self.budget.hold(request_id, num_tokens)
            return has_preempted
        for sequence in sorted(rows, key=lambda s: s.preemption_order):
            while sequence.status is SequenceStatus.DECODING and not self.budget.can_hold(
                sequence.request_id, sequence.num_cached_tokens + 1
            ):
                self.preempt_by_recompute(self.pick_victim())
                has_preempted = True
            if sequence.status is SequenceStatus.DECODING:
                self.budget.hold(sequence.request_id, sequence.num_cached_tokens + 1)
        return has_preempted

    def start_prefill_job(self) -> PrefillJob | None:
        """Waiting requests in order, while there are slots and blocks and their padded
        prefill fits the step's tokens. A lone long prompt runs in chunks over several steps.
        Requests whose contexts start with cached blocks go together, and their job starts
        after the cached columns (`ModelRunner.start_prefill`); one without stops the group."""
        num_tokens_left = self.prefill_tokens_left(self.runner.batch.num_rows)
        chosen: list[Sequence] = []
        cached: list[CachedPrefix | None] = []
        num_columns = 0
        while self.waiting and self.runner.batch.has_room_for(len(chosen) + 1):
            sequence = self.waiting[0]
            if not self.budget.can_ever_hold(sequence.num_context_tokens + 1):
                self.pending_deltas.append(self.refuse(sequence))
                continue
            path = self.prefix_caching.find(sequence.context_token_ids())
            if chosen and bool(path) != (cached[0] is not None):
                break  # hits and misses go in separate jobs: a miss would start a job at 0
            width = max(num_columns, sequence.num_context_tokens)
            if chosen and width * (len(chosen) + 1) > num_tokens_left:
                break
            self.prefix_caching.evict_for(
                self.budget.num_blocks_to_add(sequence.request_id, sequence.num_context_tokens + 1)
            )
            if not self.budget.can_hold(sequence.request_id, sequence.num_context_tokens + 1):
                break  # in order: nobody overtakes the head
            self.budget.hold(sequence.request_id, sequence.num_context_tokens)
            chosen.append(self.waiting.popleft())
            cached.append(self.prefix_caching.gather(path))  # evict_for may have cut its tail
            num_columns = width
        if not chosen:
            return None
        for sequence in chosen:
            sequence.move_to(SequenceStatus.PREFILLING)
            self.running[sequence.request_id] = sequence
        job = self.runner.start_prefill(
            [s.request_id for s in chosen], [s.context_token_ids() for s in chosen], cached
        )
        self.prefix_caching.count_hits(job)
        return job

    def decode(self) -> list[Delta]:
        sequences = [self.running[request_id] for request_id in self.runner.batch.row_ids]
        if not sequences:
            return []
        try:
            logits = self.runner.decode([s.generated_token_ids[-1] for s in sequences])
        except Exception as exc:  # e.g. out of memory: these requests fail, the engine goes on
            return self.fail_sequences(sequences, exc)
        for sequence in sequences:
            sequence.num_cached_tokens += 1
        return self.append_tokens(sequences, logits)

    def prefill_columns(self, job: PrefillJob) -> int:
        """How many of the job's columns this step computes, at most."""
        return max(self.prefill_tokens_left(self.runner.batch.num_rows) // job.num_rows, 1)

    def prefill(self) -> list[Delta]:
        job = self.job
        if job is None:
            return []
        sequences = [self.running[request_id] for request_id in job.request_ids]
        try:
            logits = self.runner.prefill(job, self.prefill_columns(job))
        except Exception as exc:
            return self.fail_sequences(sequences, exc)
        for sequence, pad in zip(sequences, job.pad_lengths, strict=True):
            sequence.num_cached_tokens = max(job.num_done - pad, 0)
        if logits is None:
            return []  # more chunks to go
        try:
            self.runner.admit(job)
            self.join_batch(sequences)
            self.prefix_caching.keep_job(job, [s.context_token_ids() for s in sequences])
        except Exception as exc:  # e.g. out of memory while the batch cache grew: it may be
            rows = [self.running[request_id] for request_id in self.runner.batch.row_ids]
            return self.fail_sequences(sequences + rows, exc)  # half moved, so no row goes on
        return self.append_tokens(sequences, logits)

    def decode_and_prefill(self) -> list[Delta]:
        """The batch's decodes and the rest of the prefill job in one forward
        (`workers.mixed_step`): the job's rows join the batch as they get their first token."""
        job = self.job
        rows = [self.running[request_id] for request_id in self.runner.batch.row_ids]
        newcomers = [self.running[request_id] for request_id in job.request_ids]
        try:
            logits = self.runner.decode_and_prefill([s.generated_token_ids[-1] for s in rows], job)
        except Exception as exc:  # the job's rows never joined the batch: the job goes as a whole
            return self.fail_sequences(rows + newcomers, exc)
        self.join_batch(newcomers)
        for sequence in rows:
            sequence.num_cached_tokens += 1
        for sequence in newcomers:
            sequence.num_cached_tokens = sequence.num_context_tokens
        self.keep_computed(newcomers)
        return self.append_tokens(rows + newcomers, logits)  # one sampling pass for both

    def join_batch(self, sequences: list[Sequence]) -> None:
        """The prefill job's requests are rows of the batch now (the runner moved them)."""
        self.job = None
        for sequence in sequences:
            sequence.move_to(SequenceStatus.DECODING)

    def keep_computed(self, sequences: list[Sequence]) -> None:
        """Keep in the prefix cache what these requests computed in the batch (those that
        are rows of it)."""
        self.prefix_caching.keep_batch_rows(
            self.runner.batch,
            [(s.request_id, s.cached_token_ids()) for s in sequences if s.status is SequenceStatus.DECODING],
        )

    # ---------------------------------------------------------------- leaving

    def clear_kv(self) -> None:
        self.job = None
        self.runner.batch.clear()
        self.budget.clear()
        self.prefix_caching.hold_cached_blocks()

    def release(self, sequence: Sequence, status: SequenceStatus) -> None:
        """Free the blocks of a request that holds KV and move it to `status` (back to the
        front of the queue, for WAITING). It leaves the batch, or the prefill job, whose
        other requests then wait at the front, in order, to start again without it."""
        assert sequence.holds_kv, f"request {sequence.request_id} is {sequence.status.name}"
        others: list[Sequence] = []
        if sequence.status is SequenceStatus.PREFILLING:
            job, self.job = self.job, None
            assert job is not None and sequence.request_id in job.request_ids
            others = [
                self.running[request_id]
                for request_id in job.request_ids
                if request_id != sequence.request_id
            ]
        else:
            self.runner.remove(sequence.request_id)
        for leaving in [sequence, *others]:
            del self.running[leaving.request_id]
            self.budget.free(leaving.request_id)
            leaving.num_cached_tokens = 0
        sequence.move_to(status)
        if status is SequenceStatus.WAITING:
            self.waiting.appendleft(sequence)
        for other in reversed(others):
            other.move_to(SequenceStatus.WAITING)
            self.waiting.appendleft(other)
