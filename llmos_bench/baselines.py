"""The transformers baselines, on the same model and prompts as the engine runs.

Each makes exactly `new_tokens` greedy tokens per prompt, as the engine does,
and times only the generation (no model loading, no warm-up, no set-up of
transformers' continuous-batching manager).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from llmos_bench.stats import synchronize

NO_EOS = -1  # what transformers' continuous batching itself uses for "no EOS"


@dataclass
class BaselineResult:
    num_requests: int
    num_prompt_tokens: int
    num_generated_tokens: int
    wall_s: float


def greedy_config(new_tokens: int, pad_token_id: int) -> Any:  # -> GenerationConfig
    from transformers import GenerationConfig

    # min_new_tokens masks EOS, so every request makes exactly new_tokens tokens
    return GenerationConfig(
        max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_token_id
    )


def generate_sequential(
    model: Any, prompts: list[list[int]], new_tokens: int, pad_token_id: int
) -> BaselineResult:
    """`model.generate` one request at a time."""
    config = greedy_config(new_tokens, pad_token_id)
    num_generated = 0
    started = time.perf_counter()
    for prompt in prompts:
        input_ids = torch.tensor([prompt], device=model.device)
        with torch.inference_mode():
            output = model.generate(
                input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config
            )
        num_generated += output.shape[1] - len(prompt)
    synchronize(model.device)
    return BaselineResult(len(prompts), sum(map(len, prompts)), num_generated, time.perf_counter() - started)


def generate_static_batch(
    model: Any, prompts: list[list[int]], new_tokens: int, pad_token_id: int
) -> BaselineResult:
    """`model.generate` on all prompts as one left-padded batch."""
    longest = max(map(len, prompts))
    input_ids = torch.tensor([[pad_token_id] * (longest - len(p)) + p for p in prompts], device=model.device)
    attention_mask = torch.tensor(
        [[0] * (longest - len(p)) + [1] * len(p) for p in prompts], device=model.device
    )
    started = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(
            input_ids,
            attention_mask=attention_mask,
            generation_config=greedy_config(new_tokens, pad_token_id),
        )
    synchronize(model.device)
    wall_s = time.perf_counter() - started
    num_generated = (output.shape[1] - longest) * len(prompts)
    return BaselineResult(len(prompts), sum(map(len, prompts)), num_generated, wall_s)


def has_continuous_batching(model: Any) -> bool:
    """Whether this transformers has continuous batching (`generate_batch`, ContinuousMixin)."""
    return all(
        callable(getattr(model, name, None))
        for name in ("generate_batch", "continuous_batching_context_manager")
    )


def generate_continuous(
    model: Any, prompts: list[list[int]], new_tokens: int, page_size: int = 256
) -> BaselineResult:
    """transformers' continuous batching (what `generate_batch` runs), all prompts
    at once. The manager is built and warmed up before the clock starts."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig
    from transformers.generation.continuous_batching.utils import WorkloadHints

    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=NO_EOS)
    # Sized to the workload: left to itself on CPU it sizes the cache from all of RAM.
    pages_per_request = math.ceil((max(map(len, prompts)) + new_tokens) / page_size)
    batching = ContinuousBatchingConfig(
        page_size=page_size, num_blocks=len(prompts) * (pages_per_request + 1)
    )
    # On CPU it reports the missing optional psutil as an ERROR on every run.
    logging.getLogger("ContinuousBatchingLogger").setLevel(logging.CRITICAL)
    hints = WorkloadHints(
        max_prompt_length=max(map(len, prompts)),  # as generate_batch gives
        max_generated_length=new_tokens,
        num_requests=len(prompts),
    )
    results = {}
    with model.continuous_batching_context_manager(
        generation_config=config,
        continuous_batching_config=batching,
        block=True,
        timeout=5,
        workload_hints=hints,
    ) as manager:
        started = time.perf_counter()
        request_ids = manager.add_requests(inputs=prompts, max_new_tokens=new_tokens)
        while len(results) < len(request_ids):
            output = manager.get_result(timeout=1)
            if output is not None and output.is_finished():
                results[output.request_id] = output
            elif output is None and not manager.is_running():
                raise RuntimeError("transformers' continuous batching loop stopped early")
        wall_s = time.perf_counter() - started
    num_generated = sum(len(output.generated_tokens) for output in results.values())
    return BaselineResult(len(prompts), sum(map(len, prompts)), num_generated, wall_s)
