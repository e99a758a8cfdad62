"""The reference engine: iteration-level scheduling, one KV cache per request.

Each `step()` admits waiting requests up to `max_num_seqs`, then advances
every running request by one token: the first forward of a request (prefill)
runs its whole context (prompt + resumed tokens), later ones run only the last
token against the request's own cache. There is no batching across requests;
this engine is the correctness reference (greedy output equals
`model.generate`), not the fast one.

The engine knows nothing of sockets or threads: the worker service drives it
from its engine thread, tests drive it directly.
"""

from __future__ import annotations

import inspect
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from llmos.wire import pb
from workers.detokenizer import find_stop, hold_back_chars, streamable_end
from workers.model_facts import model_context_length, model_eos_token_ids
from workers.requests import Delta, EngineRequest, check_request, error_delta
from workers.sampling import make_generator, sample_next_token

log = logging.getLogger(__name__)


@dataclass
class ReferenceSequence:
    """A running request: its context, its KV cache and how much text it sent."""

    request: EngineRequest
    generated_token_ids: list[int]
    emitted_text_chars: int
    generator: torch.Generator | None
    cache: Any = None  # a transformers Cache once prefilled
    has_reported: bool = False  # prompt_tokens goes on the first delta only
    hold_back: int = field(init=False)

    def __post_init__(self) -> None:
        self.hold_back = hold_back_chars(self.request.sampling.stop)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def num_context_tokens(self) -> int:
        return len(self.request.prompt_token_ids) + len(self.generated_token_ids)

    def next_input_ids(self) -> list[int]:
        if self.cache is None:
            return self.request.prompt_token_ids + self.generated_token_ids
        return self.generated_token_ids[-1:]


class ReferenceEngine:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_num_seqs: int = 16,
        max_model_len: int = 0,
        eos_token_ids: set[int] | None = None,
        worker_id: str = "",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_num_seqs = max_num_seqs
        self.max_model_len = max_model_len or model_context_length(model)
        self.eos_token_ids = frozenset(
            eos_token_ids if eos_token_ids is not None else model_eos_token_ids(model, tokenizer)
        )
        self.worker_id = worker_id
        self.waiting: deque[EngineRequest] = deque()
        self.running: dict[str, ReferenceSequence] = {}
        self.pending_deltas: list[Delta] = []
        # newer transformers call the cache argument `cache`, older ones `past_key_values`
        parameters = inspect.signature(model.forward).parameters
        self.cache_kwarg = "cache" if "cache" in parameters else "past_key_values"
        self.can_keep_last_logits = "logits_to_keep" in parameters

    # ---------------------------------------------------------------- requests in

    def add_request(self, request: EngineRequest) -> None:
        """Queue a request; one that can never run gets an error delta at the next step."""
        assert request.request_id not in self.running, f"duplicate request {request.request_id}"
        problem = check_request(request, self.max_model_len)
        if problem is not None:
            log.warning(
                "worker %s request %s refused: %s", self.worker_id, request.request_id, problem.error_message
            )
            self.pending_deltas.append(problem)
            return
        self.waiting.append(request)

    def cancel(self, request_id: str) -> bool:
        """Forget a request and free its cache now; False if it is not here."""
        sequence = self.running.pop(request_id, None)
        if sequence is not None:
            sequence.cache = None
            return True
        for request in self.waiting:
            if request.request_id == request_id:
                self.waiting.remove(request)
                return True
        return False

    def preempt(self, request_id: str) -> Delta | None:
        """Stop a request and free its cache now; its final delta (PREEMPTED, nothing new:
        every token so far was streamed), or None if it is not here."""
        sequence = self.running.get(request_id)
        waiting = next((r for r in self.waiting if r.request_id == request_id), None)
        if not self.cancel(request_id):
            return None
        delta = Delta(request_id=request_id, is_finished=True, finish_reason=pb.FINISH_REASON_PREEMPTED)
        if sequence is None or not sequence.has_reported:  # its first delta after the start
            request = sequence.request if sequence is not None else waiting
            delta.prompt_tokens = len(request.prompt_token_ids)
        return delta

    def set_kv_budget(self, num_blocks: int, block_size: int) -> None:
        """The kernel's geometry; this engine keeps one cache per request and counts no blocks."""

    def drop_all(self) -> list[str]:
        """Forget every request (their broker re-queued them); return their ids."""
        request_ids = [r.request_id for r in self.waiting] + list(self.running)
        for sequence in self.running.values():
            sequence.cache = None
        self.waiting.clear()
        self.running.clear()
        self.pending_deltas.clear()
        return request_ids

    def fail_all(self, message: str) -> list[Delta]:
        """Error deltas for every request (after a failure that is not one request's)."""
        request_ids = self.drop_all()
        return [error_delta(request_id, pb.WORKER_FAILED, message) for request_id in request_ids]

    # ---------------------------------------------------------------- state

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.pending_deltas)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_cached_tokens(self) -> int:
        return sum(s.cache.get_seq_length() for s in self.running.values() if s.cache is not None)

    # ---------------------------------------------------------------- the step

    def step(self) -> list[Delta]:
        """Admit, advance every running request by one token, return what changed."""
        deltas, self.pending_deltas = self.pending_deltas, []
        deltas += self.admit_waiting()
        for sequence in list(self.running.values()):
            delta = self.advance(sequence)
            deltas.append(delta)
            if delta.is_finished:
                self.cancel(sequence.request_id)
        return deltas

    def admit_waiting(self) -> list[Delta]:
        """Start waiting requests while there are free slots. A resumed request
        that already reached its end finishes at once, with no new tokens."""
        deltas = []
        while self.waiting and len(self.running) < self.max_num_seqs:
            request = self.waiting.popleft()
            sequence = ReferenceSequence(
                request=request,
                generated_token_ids=list(request.generated_token_ids),
                emitted_text_chars=request.emitted_text_chars,
                generator=make_generator(request.sampling, self.model.device),
            )
            text = self.tokenizer.decode(sequence.generated_token_ids, skip_special_tokens=True)
            if self.finish(sequence, text)[0] != pb.FINISH_REASON_UNSPECIFIED:
                deltas.append(self.postprocess(sequence, new_token_ids=[]))
            else:
                self.running[request.request_id] = sequence
        return deltas

    def advance(self, sequence: ReferenceSequence) -> Delta:
        try:
            logits = self.forward(sequence)
            token_id = sample_next_token(logits, sequence.request.sampling, sequence.generator)
        except Exception as exc:  # one request's failure (e.g. out of memory) must not end the others
            log.exception("worker %s request %s failed in the model", self.worker_id, sequence.request_id)
            return error_delta(
                sequence.request_id, pb.WORKER_FAILED, f"the model failed on this request: {exc}"
            )
        sequence.generated_token_ids.append(token_id)
        return self.postprocess(sequence, new_token_ids=[token_id])

    def forward(self, sequence: ReferenceSequence) -> torch.Tensor:
        """Run the model on the request's new tokens; return the next-token logits."""
        input_ids = torch.tensor([sequence.next_input_ids()], device=self.model.device)
        kwargs = {self.cache_kwarg: sequence.cache, "use_cache": True}
        if self.can_keep_last_logits:
            kwargs["logits_to_keep"] = 1  # as generate does: same matmul, same rounding
        with torch.inference_mode():
            output = self.model(input_ids=input_ids, **kwargs)
        sequence.cache = _output_cache(output)
        return output.logits[0, -1]

    def postprocess(self, sequence: ReferenceSequence, new_token_ids: list[int]) -> Delta:
        """Decide whether the request finished and which new text it may stream."""
        text = self.tokenizer.decode(sequence.generated_token_ids, skip_special_tokens=True)
        finish_reason, end = self.finish(sequence, text)
        if finish_reason == pb.FINISH_REASON_UNSPECIFIED:
            end = streamable_end(text, sequence.emitted_text_chars, sequence.hold_back)
        delta = Delta(
            request_id=sequence.request_id,
            token_ids=new_token_ids,
            text=text[sequence.emitted_text_chars : end],
            is_finished=finish_reason != pb.FINISH_REASON_UNSPECIFIED,
            finish_reason=finish_reason,
        )
        sequence.emitted_text_chars = max(sequence.emitted_text_chars, end)
        if not sequence.has_reported:
            delta.prompt_tokens = len(sequence.request.prompt_token_ids)
            sequence.has_reported = True
        return delta

    def finish(self, sequence: ReferenceSequence, text: str) -> tuple[int, int]:
        """(finish reason, end of the final text); FINISH_REASON_UNSPECIFIED if it goes on."""
        stop_at = find_stop(text, sequence.request.sampling.stop, sequence.emitted_text_chars)
        if stop_at is not None:
            return pb.FINISH_REASON_STOP, stop_at
        generated = sequence.generated_token_ids
        if generated and generated[-1] in self.eos_token_ids:
            return pb.FINISH_REASON_EOS, len(text)
        if (
            len(generated) >= sequence.request.sampling.max_tokens
            or sequence.num_context_tokens >= self.max_model_len
        ):
            return pb.FINISH_REASON_LENGTH, len(text)
        return pb.FINISH_REASON_UNSPECIFIED, len(text)


def _output_cache(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values
