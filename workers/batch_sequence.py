"""A request inside the batched engine, its status, and how its new tokens become a `Delta`.

A `Sequence` lives from `add_request` until it reaches a final status. Its status
says where it is, and `move_to` asserts every change against TRANSITIONS:

    WAITING ----> PREFILLING ----> DECODING ----> FINISHED
       ^              |                |
       +--------------+----------------+   preempted by recompute (KV blocks ran out)

and from WAITING, PREFILLING or DECODING: CANCELLED, PREEMPTED (told to, from
outside), FAILED or DROPPED; WAITING -> FINISHED for a request resumed at its end.

A preemption by recompute keeps the object, with its generated tokens, its text,
its RNG and what it streamed, and only forgets its KV cache (`num_cached_tokens =
0`), so nothing is sent twice.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

from llmos.wire import pb
from workers.detokenizer import IncrementalText, find_stop, hold_back_chars, streamable_end
from workers.requests import Delta, EngineRequest


class SequenceStatus(enum.Enum):
    WAITING = "waiting"  # in the engine's queue; holds no KV blocks
    PREFILLING = "prefilling"  # in the prefill job: holds KV blocks, its context being computed
    DECODING = "decoding"  # a row of the batch: one new token a step
    FINISHED = "finished"  # made its last token (or was resumed at its end)
    CANCELLED = "cancelled"  # cancelled from outside
    PREEMPTED = "preempted"  # told to preempt from outside; what it computed may stay cached
    FAILED = "failed"  # the model failed on it, or it no longer fits the KV budget
    DROPPED = "dropped"  # dropped with every request (the broker re-queued them)


_LEAVING = frozenset(
    {SequenceStatus.CANCELLED, SequenceStatus.PREEMPTED, SequenceStatus.FAILED, SequenceStatus.DROPPED}
)
TRANSITIONS: dict[SequenceStatus, frozenset[SequenceStatus]] = {
    SequenceStatus.WAITING: frozenset({SequenceStatus.PREFILLING, SequenceStatus.FINISHED}) | _LEAVING,
    SequenceStatus.PREFILLING: frozenset({SequenceStatus.DECODING, SequenceStatus.WAITING}) | _LEAVING,
    SequenceStatus.DECODING: frozenset({SequenceStatus.FINISHED, SequenceStatus.WAITING}) | _LEAVING,
    SequenceStatus.FINISHED: frozenset(),
    **{status: frozenset() for status in _LEAVING},
}
HOLDS_KV = frozenset({SequenceStatus.PREFILLING, SequenceStatus.DECODING})  # the engine's `running`


@dataclass(eq=False)
class Sequence:
    request: EngineRequest
    arrival_seq: int  # engine-wide order of add_request
    generated_token_ids: list[int]
    emitted_text_chars: int
    generator: torch.Generator | None
    detokenizer: IncrementalText
    status: SequenceStatus = SequenceStatus.WAITING
    num_cached_tokens: int = 0  # tokens whose keys and values are in the cache
    has_reported: bool = False  # prompt_tokens goes on the first delta only
    hold_back: int = field(init=False)

    def __post_init__(self) -> None:
        self.hold_back = hold_back_chars(self.request.sampling.stop)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    def move_to(self, status: SequenceStatus) -> None:
        """The one place a status changes; a change TRANSITIONS does not allow is a bug."""
        assert status in TRANSITIONS[self.status], (
            f"request {self.request_id}: {self.status.name} -> {status.name} is not a transition"
        )
        self.status = status

    @property
    def holds_kv(self) -> bool:
        return self.status in HOLDS_KV

    @property
    def has_left(self) -> bool:
        """In a final status: the engine has forgotten it."""
        return not TRANSITIONS[self.status]

    @property
    def num_context_tokens(self) -> int:
        return len(self.request.prompt_token_ids) + len(self.generated_token_ids)

    def context_token_ids(self) -> list[int]:
        return self.request.prompt_token_ids + self.generated_token_ids

    def cached_token_ids(self) -> list[int]:
        """The context tokens whose keys and values are in the cache."""
        return self.context_token_ids()[: self.num_cached_tokens]

    @property
    def preemption_order(self) -> tuple[int, int]:
        """The largest is preempted first: least important, then latest arrival."""
        return self.request.priority, self.arrival_seq

    def make_delta(
        self, new_token_ids: list[int], max_context_tokens: int, eos_token_ids: frozenset[int]
    ) -> Delta:
        """Decide whether the request finished and which new text it may stream."""
        self.detokenizer.update(self.generated_token_ids)
        finish_reason, text = self.finish_reason(max_context_tokens, eos_token_ids)
        if finish_reason == pb.FINISH_REASON_UNSPECIFIED:
            end = streamable_end(text, self.emitted_text_chars, self.hold_back)
        elif finish_reason == pb.FINISH_REASON_STOP:
            end = find_stop(text, self.request.sampling.stop, self.emitted_text_chars)
        else:
            text = self.detokenizer.final_text(self.generated_token_ids)
            end = len(text)
        delta = Delta(
            request_id=self.request_id,
            token_ids=new_token_ids,
            text=text[self.emitted_text_chars : end],
            is_finished=finish_reason != pb.FINISH_REASON_UNSPECIFIED,
            finish_reason=finish_reason,
        )
        self.emitted_text_chars = max(self.emitted_text_chars, end)
        if not self.has_reported:
            delta.prompt_tokens = len(self.request.prompt_token_ids)
            self.has_reported = True
        return delta

    def finish_reason(self, max_context_tokens: int, eos_token_ids: frozenset[int]) -> tuple[int, str]:
        """(finish reason, the text it applies to); FINISH_REASON_UNSPECIFIED if it goes on."""
        text = self.detokenizer.text
        if find_stop(text, self.request.sampling.stop, self.emitted_text_chars) is not None:
            return pb.FINISH_REASON_STOP, text
        generated = self.generated_token_ids
        if generated and generated[-1] in eos_token_ids:
            return pb.FINISH_REASON_EOS, text
        if (
            len(generated) >= self.request.sampling.max_tokens
            or self.num_context_tokens >= max_context_tokens
        ):
            return pb.FINISH_REASON_LENGTH, text
        return pb.FINISH_REASON_UNSPECIFIED, text

    def final_delta(self, finish_reason: int) -> Delta:
        """A final delta with nothing new (cancelled or preempted from outside)."""
        delta = Delta(request_id=self.request_id, is_finished=True, finish_reason=finish_reason)
        if not self.has_reported:
            delta.prompt_tokens = len(self.request.prompt_token_ids)
        return delta
