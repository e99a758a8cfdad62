"""Helpers shared by the tests that drive an engine directly (no sockets, no threads)."""

from __future__ import annotations

from dataclasses import dataclass, field

from workers.requests import Delta, EngineRequest, SamplingOptions


@dataclass
class Answer:
    """What one request streamed, delta by delta."""

    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    deltas: list[Delta] = field(default_factory=list)

    @property
    def final(self) -> Delta:
        return self.deltas[-1]

    def add(self, delta: Delta) -> None:
        self.deltas.append(delta)
        self.token_ids += delta.token_ids
        self.text += delta.text


def make_request(tokenizer, request_id: str, prompt: str, **sampling) -> EngineRequest:
    return EngineRequest(request_id, tokenizer.encode(prompt), SamplingOptions(**sampling))
