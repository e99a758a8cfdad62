"""Admission: validate a client's GenerateRequest before it is queued.

Pure functions: a request either comes back normalized (defaults filled in) or
a WireError says, with a code and a sentence, why it was refused.
"""

from __future__ import annotations

import math
from collections.abc import Collection

from broker.config import BrokerConfig
from llmos.wire import WireError, pb
from llmos.wire.constants import DEFAULT_TENANT

MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
MAX_ID_CHARS = 256


def _refuse(code: int, message: str, request_id: str) -> WireError:
    return WireError(code, message, request_id)


def _check_sampling(sampling: pb.SamplingParams, config: BrokerConfig, request_id: str) -> None:
    if sampling.max_tokens < 0:
        raise _refuse(pb.INVALID_ARGUMENT, f"max_tokens must be >= 0, got {sampling.max_tokens}", request_id)
    if sampling.max_tokens > config.max_tokens_limit:
        raise _refuse(pb.INVALID_ARGUMENT,
                      f"max_tokens {sampling.max_tokens} is above this broker's limit "
                      f"of {config.max_tokens_limit}", request_id)
    if not math.isfinite(sampling.temperature) or sampling.temperature < 0:
        raise _refuse(pb.INVALID_ARGUMENT,
                      f"temperature must be a finite number >= 0, got {sampling.temperature}", request_id)
    if sampling.HasField("top_p") and not (0 < sampling.top_p <= 1):
        raise _refuse(pb.INVALID_ARGUMENT, f"top_p must be in (0, 1], got {sampling.top_p}", request_id)
    if sampling.top_k < 0:
        raise _refuse(pb.INVALID_ARGUMENT, f"top_k must be >= 0, got {sampling.top_k}", request_id)
    if len(sampling.stop) > MAX_STOP_STRINGS:
        raise _refuse(pb.INVALID_ARGUMENT, f"at most {MAX_STOP_STRINGS} stop strings", request_id)
    for stop in sampling.stop:
        if not stop or len(stop) > MAX_STOP_CHARS:
            raise _refuse(pb.INVALID_ARGUMENT,
                          f"stop strings must have 1 to {MAX_STOP_CHARS} characters", request_id)


def validate_generate(request: pb.GenerateRequest, config: BrokerConfig,
                      known_models: Collection[str]) -> pb.GenerateRequest:
    """Return a normalized copy of `request` or raise WireError."""
    request_id = request.request_id
    if not request_id or len(request_id) > MAX_ID_CHARS:
        raise _refuse(pb.INVALID_ARGUMENT, f"request_id must have 1 to {MAX_ID_CHARS} characters", request_id[:MAX_ID_CHARS])
    if not request.prompt:
        raise _refuse(pb.INVALID_ARGUMENT, "prompt is empty", request_id)
    prompt_bytes = len(request.prompt.encode("utf-8", errors="surrogatepass"))
    if prompt_bytes > config.max_prompt_bytes:
        raise _refuse(pb.TOO_LARGE, f"prompt is {prompt_bytes} bytes; this broker accepts at most "
                      f"{config.max_prompt_bytes}", request_id)
    tier = request.tier or config.default_tier
    if tier not in config.tier_names:
        raise _refuse(pb.INVALID_ARGUMENT, f"unknown tier '{tier}'; tiers are {', '.join(config.tier_names)}",
                      request_id)
    if request.model and request.model not in known_models:
        known = ", ".join(sorted(known_models)) or "none yet"
        raise _refuse(pb.UNKNOWN_MODEL, f"no worker serves model '{request.model}' (models: {known})",
                      request_id)
    _check_sampling(request.sampling, config, request_id)
    normalized = pb.GenerateRequest()
    normalized.CopyFrom(request)
    normalized.tier = tier
    normalized.tenant = request.tenant or DEFAULT_TENANT
    if normalized.sampling.max_tokens == 0:
        normalized.sampling.max_tokens = config.default_max_tokens
    return normalized
