"""Plain data the engine takes and returns (no sockets, no protobuf objects).

Finish reasons and error codes are the wire enums' integer values
(`pb.FINISH_REASON_*`, `pb.TOO_LARGE`, ...), so no second enum drifts from the proto.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmos.wire import pb
from llmos.wire.constants import DEFAULT_MAX_TOKENS


@dataclass(frozen=True)
class SamplingOptions:
    max_tokens: int = DEFAULT_MAX_TOKENS  # counts resumed tokens too
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class EngineRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    # Resume after a worker died: the tokens the client already has, and how
    # many characters of their text it has seen.
    generated_token_ids: list[int] = field(default_factory=list)
    emitted_text_chars: int = 0
    # 0 = most important (like a tier rank); when KV blocks run out the batched
    # engine preempts the highest value first, the latest arrival among equals
    priority: int = 0


@dataclass
class Delta:
    """What one request did in one step (mirrors pb.RequestDelta)."""

    request_id: str
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    prompt_tokens: int = 0  # set on the first delta after (re)start
    is_finished: bool = False
    finish_reason: int = pb.FINISH_REASON_UNSPECIFIED
    error_code: int = pb.ERROR_CODE_UNSPECIFIED
    error_message: str = ""
    # pooling models (workers.pooling), on the final delta: one entry per input, in order
    embeddings: list[list[float]] = field(default_factory=list)
    # per input: (label, score) for every label, in model order
    classifications: list[list[tuple[str, float]]] = field(default_factory=list)


def error_delta(request_id: str, code: int, message: str, prompt_tokens: int = 0) -> Delta:
    return Delta(
        request_id=request_id,
        prompt_tokens=prompt_tokens,
        is_finished=True,
        finish_reason=pb.FINISH_REASON_ERROR,
        error_code=code,
        error_message=message,
    )


def cancelled_delta(request_id: str) -> Delta:
    return Delta(request_id=request_id, is_finished=True, finish_reason=pb.FINISH_REASON_CANCELLED)


def check_request(request: EngineRequest, max_model_len: int) -> Delta | None:
    """The error delta for a request that can never run on this model, else None."""
    num_prompt_tokens = len(request.prompt_token_ids)
    sampling = request.sampling
    problem = None
    if num_prompt_tokens == 0 and not request.generated_token_ids:
        problem = (pb.INVALID_ARGUMENT, "the prompt is empty and the tokenizer adds no tokens")
    elif num_prompt_tokens > max_model_len - 1:
        problem = (
            pb.TOO_LARGE,
            f"the prompt has {num_prompt_tokens} tokens but this model "
            f"accepts at most {max_model_len - 1} (max_model_len {max_model_len} "
            f"leaves room for one generated token)",
        )
    elif sampling.max_tokens < 0 or sampling.temperature < 0 or sampling.top_k < 0:
        problem = (pb.INVALID_ARGUMENT, "max_tokens, temperature and top_k must not be negative")
    elif not 0.0 < sampling.top_p <= 1.0:
        problem = (pb.INVALID_ARGUMENT, f"top_p must be in (0, 1], got {sampling.top_p}")
    if problem is None:
        return None
    return error_delta(request.request_id, *problem, prompt_tokens=num_prompt_tokens)
