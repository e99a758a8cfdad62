"""Helpers shared by the end-to-end tests: reference generation and stream checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llmos.client import Client
from llmos.wire import pb


class Reference:
    """Direct `transformers` greedy generation, the ground truth for the stack."""

    def __init__(self, model_dir: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(1)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()

    def greedy(self, prompt: str, max_new_tokens: int) -> list[int]:
        inputs = self.tokenizer(prompt, return_tensors="pt")
        with self.torch.no_grad():
            output = self.model.generate(
                **inputs,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        return output[0, inputs["input_ids"].shape[1] :].tolist()


@dataclass
class StreamedAnswer:
    chunks: list[pb.TokenChunk] = field(default_factory=list)
    result: pb.GenerateResult | None = None

    @property
    def token_ids(self) -> list[int]:
        return [t for chunk in self.chunks for t in chunk.token_ids]

    @property
    def text(self) -> str:
        return "".join(chunk.text for chunk in self.chunks)

    def assert_whole(self) -> None:
        """Every token exactly once, in order, and the result agrees with the stream."""
        assert self.result is not None, "no final result"
        position = 0
        for chunk in self.chunks:
            assert chunk.index == position, f"chunk at {chunk.index}, expected {position}"
            position += len(chunk.token_ids)
        assert list(self.result.token_ids) == self.token_ids
        assert self.result.text == self.text
        assert self.result.usage.generated_tokens == len(self.token_ids)


def stream_answer(client: Client, prompt: str, **params) -> StreamedAnswer:
    request_id = client.submit(prompt, **params)
    answer = StreamedAnswer()
    for chunk in client.stream(request_id):
        answer.chunks.append(chunk)
    answer.result = client.result(request_id)
    return answer
