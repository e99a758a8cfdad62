"""What every continuous-batching engine does with requests, whatever its KV cache.

A request becomes a `Sequence` (`workers.batch_sequence`) at `add_request` and
leaves at a final status. `EngineCore` owns the queue (`waiting`), the requests
that hold KV (`running`), their deltas, sampling, and the ways out: finished,
cancelled, preempted from outside, preempted by recompute, failed, dropped.

Where the keys and values live is the subclass's: the padded batch cache
(`workers.batched_engine`) or the paged one (`workers.paged_engine`). Each has
its own step, and says how a request's KV is freed (`release`), what it keeps in
its prefix cache when requests leave (`keep_computed`) and how it forgets all
(`clear_kv`). Both count blocks in the kernel's units (`budget`).
"""

from __future__ import annotations

import abc
import logging
from collections import deque
from typing import Any, Protocol

import torch

from llmos.wire import pb
from workers.batch_sequence import Sequence, SequenceStatus
from workers.detokenizer import IncrementalText
from workers.model_facts import model_context_length, model_eos_token_ids
from workers.requests import Delta, EngineRequest, check_request, error_delta
from workers.sampling import make_generator, sample_next_token

log = logging.getLogger(__name__)

MIN_PREFILL_TOKENS = 32  # a prefill always gets this much of a step, so newcomers progress


class BlockBudget(Protocol):
    """The kernel's KV blocks as an engine counts them."""

    block_size: int

    @property
    def num_blocks(self) -> int: ...

    def blocks_for(self, num_tokens: int) -> int: ...

    def can_ever_hold(self, num_tokens: int) -> bool: ...


class EngineCore(abc.ABC):
    budget: BlockBudget

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_num_seqs: int,
        max_model_len: int,
        eos_token_ids: set[int] | None,
        worker_id: str,
        max_num_batched_tokens: int,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_num_seqs = max_num_seqs
        self.max_model_len = max_model_len or model_context_length(model)
        self.eos_token_ids = frozenset(
            eos_token_ids if eos_token_ids is not None else model_eos_token_ids(model, tokenizer)
        )
        self.worker_id = worker_id
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()  # WAITING
        self.running: dict[str, Sequence] = {}  # holding KV: PREFILLING or DECODING
        self.pending_deltas: list[Delta] = []
        self.num_arrivals = 0

    # ---------------------------------------------------------------- what a subclass says

    @abc.abstractmethod
    def step(self) -> list[Delta]:
        """Schedule, run the model once or twice, sample; return what changed."""

    @abc.abstractmethod
    def release(self, sequence: Sequence, status: SequenceStatus) -> None:
        """Free the KV of a request that holds some, take it out of `running` and move it
        to `status` (back to the front of the queue, for WAITING)."""

    @abc.abstractmethod
    def keep_computed(self, sequences: list[Sequence]) -> None:
        """These requests leave (finished, preempted): keep what they computed in the prefix cache."""

    @abc.abstractmethod
    def clear_kv(self) -> None:
        """Every request is forgotten: free all their KV (cached prefixes may stay)."""

    # ---------------------------------------------------------------- requests in

    def add_request(self, request: EngineRequest) -> None:
        """Queue a request; one that can never run gets an error delta at the next step."""
        assert self.find(request.request_id) is None, f"duplicate request {request.request_id}"
        problem = check_request(request, self.max_model_len) or self.check_fits(request)
        if problem is not None:
            log.warning(
                "worker %s request %s refused: %s", self.worker_id, request.request_id, problem.error_message
            )
            self.pending_deltas.append(problem)
            return
        sequence = Sequence(
            request=request,
            arrival_seq=self.num_arrivals,
            generated_token_ids=list(request.generated_token_ids),
            emitted_text_chars=request.emitted_text_chars,
            generator=make_generator(request.sampling, self.model.device),
            detokenizer=IncrementalText(self.tokenizer, request.generated_token_ids),
        )
        self.num_arrivals += 1
        if (
            sequence.generated_token_ids
            and sequence.finish_reason(self.max_context_tokens, self.eos_token_ids)[0]
            != pb.FINISH_REASON_UNSPECIFIED
        ):
            # resumed at its end: finish at once with the held-back text, no new tokens
            self.pending_deltas.append(self.make_delta(sequence, []))
            sequence.move_to(SequenceStatus.FINISHED)
            return
        self.waiting.append(sequence)

    def check_fits(self, request: EngineRequest) -> Delta | None:
        num_tokens = len(request.prompt_token_ids) + 1  # room for its first generated token
        if self.budget.can_ever_hold(num_tokens):
            return None
        return error_delta(
            request.request_id,
            pb.TOO_LARGE,
            f"the prompt needs {self.budget.blocks_for(num_tokens)} KV blocks but "
            f"this engine has {self.budget.num_blocks}",
            prompt_tokens=len(request.prompt_token_ids),
        )

    def refuse(self, sequence: Sequence) -> Delta:
        """A waiting request that no longer fits the budget (it shrank)."""
        self.forget(sequence, SequenceStatus.FAILED)
        num_tokens = sequence.num_context_tokens + 1
        log.warning("worker %s request %s no longer fits the KV budget", self.worker_id, sequence.request_id)
        return error_delta(
            sequence.request_id,
            pb.TOO_LARGE,
            f"the request needs {self.budget.blocks_for(num_tokens)} KV blocks but "
            f"this engine now has {self.budget.num_blocks}",
        )

    def cancel(self, request_id: str) -> bool:
        """Forget a request and free its KV blocks now; False if it is not here."""
        sequence = self.find(request_id)
        if sequence is None:
            return False
        self.forget(sequence, SequenceStatus.CANCELLED)
        return True

    def preempt(self, request_id: str) -> Delta | None:
        """Stop a request and free its KV blocks now; its final delta (PREEMPTED, nothing
        new: every token so far was streamed), or None if it is not here. What it has
        computed stays in the prefix cache (blocks nobody needs), so when the scheduler
        sends it back here, its resume recomputes only what the cache lost meanwhile."""
        sequence = self.find(request_id)
        if sequence is None:
            return None
        self.keep_computed([sequence])
        self.forget(sequence, SequenceStatus.PREEMPTED)
        log.info(
            "worker %s request %s preempted after %d tokens",
            self.worker_id,
            request_id,
            len(sequence.generated_token_ids),
        )
        return sequence.final_delta(pb.FINISH_REASON_PREEMPTED)

    def drop_all(self) -> list[str]:
        """Forget every request (their broker re-queued them); return their ids."""
        return self.forget_all(SequenceStatus.DROPPED)

    def fail_all(self, message: str) -> list[Delta]:
        """Error deltas for every request (after a failure that is not one request's)."""
        request_ids = self.forget_all(SequenceStatus.FAILED)
        return [error_delta(request_id, pb.WORKER_FAILED, message) for request_id in request_ids]

    def forget_all(self, status: SequenceStatus) -> list[str]:
        sequences = [*self.waiting, *self.running.values()]
        for sequence in sequences:
            sequence.move_to(status)
        self.waiting.clear()
        self.running.clear()
        self.clear_kv()
        self.pending_deltas.clear()
        return [sequence.request_id for sequence in sequences]

    # ---------------------------------------------------------------- state

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.pending_deltas)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_cached_tokens(self) -> int:
        return sum(s.num_cached_tokens for s in self.running.values())

    @property
    def max_context_tokens(self) -> int:
        """A request stops (LENGTH) at the model's context or when it alone fills the KV budget."""
        return min(self.max_model_len, self.budget.num_blocks * self.budget.block_size)

    def find(self, request_id: str) -> Sequence | None:
        if request_id in self.running:
            return self.running[request_id]
        return next((s for s in self.waiting if s.request_id == request_id), None)

    def prefill_tokens_left(self, num_decodes: int) -> int:
        """A step's tokens left for prefill after `num_decodes` decodes."""
        return max(self.max_num_batched_tokens - num_decodes, MIN_PREFILL_TOKENS)

    # ---------------------------------------------------------------- tokens out

    def append_tokens(self, sequences: list[Sequence], logits: torch.Tensor) -> list[Delta]:
        deltas, finished = [], []
        for sequence, token_id in zip(sequences, self.sample(sequences, logits), strict=True):
            sequence.generated_token_ids.append(token_id)
            delta = self.make_delta(sequence, [token_id])
            deltas.append(delta)
            if delta.is_finished:
                finished.append(sequence)
        self.keep_computed(finished)
        for sequence in finished:
            self.release(sequence, SequenceStatus.FINISHED)
        return deltas

    def sample(self, sequences: list[Sequence], logits: torch.Tensor) -> list[int]:
        """One token per row: greedy rows by one argmax over the batch, sampled rows
        with their own generator (seeded runs repeat exactly)."""
        if all(s.generator is None for s in sequences):
            return logits.argmax(dim=-1).tolist()
        greedy = logits.argmax(dim=-1).tolist()
        return [
            greedy[row]
            if s.generator is None
            else sample_next_token(logits[row], s.request.sampling, s.generator)
            for row, s in enumerate(sequences)
        ]

    def make_delta(self, sequence: Sequence, new_token_ids: list[int]) -> Delta:
        return sequence.make_delta(new_token_ids, self.max_context_tokens, self.eos_token_ids)

    # ---------------------------------------------------------------- leaving

    def pick_victim(self) -> Sequence:
        assert self.running, "over the KV budget with nothing running"
        return max(self.running.values(), key=lambda s: s.preemption_order)

    def preempt_by_recompute(self, sequence: Sequence) -> None:
        """Free the request's cache; it waits at the front and is prefilled again later."""
        self.release(sequence, SequenceStatus.WAITING)
        log.info(
            "worker %s request %s preempted by recompute (KV blocks ran out): %d tokens kept",
            self.worker_id,
            sequence.request_id,
            len(sequence.generated_token_ids),
        )

    def forget(self, sequence: Sequence, status: SequenceStatus) -> None:
        """Take a request out of the engine for good, wherever it is; `status` says why."""
        if sequence.status is SequenceStatus.WAITING:
            self.waiting.remove(sequence)
            sequence.move_to(status)
        else:
            self.release(sequence, status)

    def fail_sequences(self, sequences: list[Sequence], exc: Exception) -> list[Delta]:
        """Error deltas for requests the model failed on, which leave the engine."""
        failed = list({s.request_id: s for s in sequences}.values())  # a request may be listed twice
        log.exception(
            "worker %s: the model failed on requests %s",
            self.worker_id,
            ", ".join(s.request_id for s in failed),
        )
        for sequence in failed:
            self.forget(sequence, SequenceStatus.FAILED)
        return [
            error_delta(s.request_id, pb.WORKER_FAILED, f"the model failed on this request: {exc}")
            for s in failed
        ]
