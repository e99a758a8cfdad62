"""Helpers shared by the tests that drive an engine directly (no sockets, no threads)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoModelForCausalLM, GPT2Config, MistralConfig, Phi3Config, Qwen2Config, Qwen3Config

from llmos.tiny_model import CORPUS
from llmos.wire import pb
from workers.requests import Delta, EngineRequest, SamplingOptions

WORDS = CORPUS.split()


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


def tiny_random_model(family: str, tokenizer, attn_implementation: str):
    """A two-layer model of `family` with random weights drawn wide (clear greedy winners)."""
    special = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        vocab_size=len(tokenizer),
    )
    if family == "gpt2":
        config = GPT2Config(n_positions=256, n_embd=64, n_layer=2, n_head=4, initializer_range=0.2, **special)
    else:  # Llama-like bodies; Mistral's window is shorter than the prompts on purpose
        config_class = {
            "qwen2": Qwen2Config,
            "qwen3": Qwen3Config,
            "phi3": Phi3Config,
            "mistral": MistralConfig,
        }[family]
        window = dict(sliding_window=16) if family == "mistral" else {}
        config = config_class(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            initializer_range=0.2,
            tie_word_embeddings=False,
            **window,
            **special,
        )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    return model.eval()


def make_prompts(count: int, seed: int, max_words: int = 40) -> list[str]:
    """Corpus snippets of 1 to `max_words` words: prompt lengths from 2 to ~100 tokens."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        start, num_words = rng.randrange(len(WORDS)), rng.randint(1, max_words)
        prompts.append(" ".join((WORDS * 2)[start : start + num_words]))
    return prompts


def run_engine_to_end(
    engine: Any,
    check_invariants: Callable[[Any], None],
    arrivals: dict[int, list[EngineRequest]] | None = None,
    answers: dict[str, Answer] | None = None,
) -> dict[str, Answer]:
    """Step until idle, adding `arrivals[n]` before step n; check the invariants after every step."""
    arrivals = dict(arrivals or {})
    answers = answers if answers is not None else {}
    step = 0
    while engine.has_work or arrivals:
        for request in arrivals.pop(step, []):
            engine.add_request(request)
        for delta in engine.step():
            answer = answers.setdefault(delta.request_id, Answer())
            assert not answer.deltas or not answer.final.is_finished, "a delta after the final one"
            answer.add(delta)
        check_invariants(engine)
        step += 1
    assert engine.num_cached_tokens == 0 and engine.num_request_blocks == 0
    return answers


def assert_greedy(
    model, tokenizer, answers: dict[str, Answer], prompts: dict[str, str], max_tokens: dict[str, int]
) -> None:
    for request_id, prompt in prompts.items():
        expected = generate_greedy(model, tokenizer, prompt, max_tokens[request_id])
        answer = answers[request_id]
        assert answer.token_ids == expected, request_id
        assert answer.text == tokenizer.decode(expected, skip_special_tokens=True)
        assert answer.final.finish_reason == (
            pb.FINISH_REASON_EOS if expected[-1] == tokenizer.eos_token_id else pb.FINISH_REASON_LENGTH
        )
