"""Helpers shared by the tests that drive an engine directly (no sockets, no threads)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

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


def generate_greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> list[int]:
    """What `model.generate` answers greedily to the prompt alone (on the model's device)."""
    input_ids = torch.tensor([tokenizer.encode(prompt)], device=model.device)
    output = model.generate(
        input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False, max_new_tokens=max_new_tokens
    )
    return output[0, input_ids.shape[1] :].tolist()
