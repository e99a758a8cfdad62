"""A request inside the batched engine, and how its new tokens become a `Delta`.

A `Sequence` lives from `add_request` until it finishes, is cancelled or is
preempted from outside. A preemption by recompute inside the engine keeps the
object, with its generated tokens, its text, its RNG and what it streamed, and
only forgets its KV cache (`num_cached_tokens = 0`), so nothing is sent twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from llmos.wire import pb
from workers.detokenizer import IncrementalText, find_stop, hold_back_chars, streamable_end
from workers.requests import Delta, EngineRequest


@dataclass
class Sequence:
    request: EngineRequest
    arrival_seq: int                        # engine-wide order of add_request
    generated_token_ids: list[int]
    emitted_text_chars: int
    generator: torch.Generator | None
    detokenizer: IncrementalText
    num_cached_tokens: int = 0              # tokens whose keys and values are in the cache
    has_reported: bool = False              # prompt_tokens goes on the first delta only
    hold_back: int = field(init=False)

    def __post_init__(self) -> None:
        self.hold_back = hold_back_chars(self.request.sampling.stop)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def num_context_tokens(self) -> int:
        return len(self.request.prompt_token_ids) + len(self.generated_token_ids)

    def context_token_ids(self) -> list[int]:
        return self.request.prompt_token_ids + self.generated_token_ids

    @property
    def preemption_order(self) -> tuple[int, int]:
        """The largest is preempted first: least important, then latest arrival."""
        return self.request.priority, self.arrival_seq

    def make_delta(self, new_token_ids: list[int], max_context_tokens: int,
                   eos_token_ids: frozenset[int]) -> Delta:
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
            request_id=self.request_id, token_ids=new_token_ids,
            text=text[self.emitted_text_chars:end],
            is_finished=finish_reason != pb.FINISH_REASON_UNSPECIFIED, finish_reason=finish_reason,
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
        if (len(generated) >= self.request.sampling.max_tokens
                or self.num_context_tokens >= max_context_tokens):
            return pb.FINISH_REASON_LENGTH, text
        return pb.FINISH_REASON_UNSPECIFIED, text

    def final_delta(self, finish_reason: int) -> Delta:
        """A final delta with nothing new (cancelled or preempted from outside)."""
        delta = Delta(request_id=self.request_id, is_finished=True, finish_reason=finish_reason)
        if not self.has_reported:
            delta.prompt_tokens = len(self.request.prompt_token_ids)
        return delta
