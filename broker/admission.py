"""Admission: validate a client's request before it is queued.

Pure functions: a request either comes back as an `AdmittedRequest` (normalized,
defaults filled in, its model resolved) or a WireError says, with a code and a
sentence, why it was refused. `AdmissionRules` holds what they check against,
parsed once from the broker's config.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from broker.bounds import MAX_MODEL_NAME_BYTES, MAX_REQUEST_ID_BYTES, MAX_TENANT_BYTES, name_problem, utf8_len
from broker.config import BrokerConfig
from broker.tiers import TierLimits, parse_tenant_quotas, parse_tier_limits
from llmos.wire import WireError, pb
from llmos.wire.constants import DEFAULT_TENANT

MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
RETRY_UNKNOWN_MODEL_MS = 1000
TASK_NAMES = {
    pb.TASK_KIND_GENERATE: "text generation",
    pb.TASK_KIND_EMBED: "embeddings",
    pb.TASK_KIND_CLASSIFY: "classification",
}

TaskRequest = pb.GenerateRequest | pb.EmbedRequest | pb.ClassifyRequest
TaskModels = Mapping[pb.TaskKind, Collection[str]]  # the models workers serve, by task


@dataclass(frozen=True)
class ModelView:
    """What admission knows of the models: the names requests may use (served, or in
    the grace after their last worker left), those served now (a request naming no
    model gets one of these first), and each model's context in tokens (0 = unknown)."""

    accepted: TaskModels
    serving: TaskModels
    max_model_lens: Mapping[tuple[pb.TaskKind, str], int] = field(default_factory=dict)

    @classmethod
    def of(cls, models: TaskModels | ModelView) -> ModelView:
        return models if isinstance(models, ModelView) else cls(models, models)


@dataclass
class AdmittedRequest:
    """A request the broker accepted, in the one shape every task shares."""

    request_id: str
    kind: pb.TaskKind
    model: str
    tier: str
    tenant: str
    deadline_ms: int
    prompt: str = ""
    sampling: pb.SamplingParams = field(default_factory=pb.SamplingParams)
    inputs: list[str] = field(default_factory=list)
    is_final_only: bool = False  # generate: the client reads the result only, no chunks


def _refuse(code: int, message: str, request_id: str, retry_after_ms: int = 0) -> WireError:
    return WireError(code, message, request_id, retry_after_ms)


def _check_name(what: str, text: str, max_bytes: int, request_id: str, may_be_empty: bool = True) -> None:
    problem = None if (may_be_empty and not text) else name_problem(text, max_bytes)
    if problem is not None:
        raise _refuse(pb.INVALID_ARGUMENT, f"{what} {problem}", request_id)


def _check_common(request: TaskRequest, tier: str, limits: dict[str, TierLimits]) -> TierLimits:
    """The checks every task shares: its names are bounded (each one held while it
    lives), its tier is known."""
    request_id = request.request_id
    problem = name_problem(request_id, MAX_REQUEST_ID_BYTES)
    if problem is not None:
        raise _refuse(pb.INVALID_ARGUMENT, f"request_id {problem}", request_id[:MAX_REQUEST_ID_BYTES])
    _check_name("tenant", request.tenant, MAX_TENANT_BYTES, request_id)
    _check_name("model", request.model, MAX_MODEL_NAME_BYTES, request_id)
    if tier not in limits:
        raise _refuse(
            pb.INVALID_ARGUMENT, f"unknown tier '{tier[:64]}'; tiers are {', '.join(limits)}", request_id
        )
    return limits[tier]


def resolve_model(model: str, kind: pb.TaskKind, models: TaskModels | ModelView, request_id: str) -> str:
    """The model to run: as named, or the task's default (the first by name of those
    served now, else of those in their grace)."""
    view = ModelView.of(models)
    accepted = view.accepted.get(kind, ())
    if model and model in accepted:
        return model
    if not accepted:
        raise _refuse(
            pb.UNKNOWN_MODEL, f"no worker serves {TASK_NAMES[kind]} yet", request_id, RETRY_UNKNOWN_MODEL_MS
        )
    if model:
        raise _refuse(
            pb.UNKNOWN_MODEL,
            f"no worker serves model '{model}' for {TASK_NAMES[kind]} "
            f"(models: {', '.join(sorted(accepted))})",
            request_id,
        )
    return min(view.serving.get(kind) or accepted)


def _check_context(
    texts: list[str], kind: pb.TaskKind, model: str, view: ModelView, config: BrokerConfig, request_id: str
) -> None:
    """Refuse a text longer in bytes than the model's context could hold in tokens,
    before a worker spends time tokenizing it."""
    max_model_len = view.max_model_lens.get((kind, model), 0)
    max_bytes = max_model_len * config.max_prompt_bytes_per_token
    for text in texts:
        if max_model_len and (num_bytes := utf8_len(text)) > max_bytes:
            raise _refuse(
                pb.TOO_LARGE,
                f"a text of {num_bytes} bytes is longer than model '{model}' can take "
                f"({max_model_len} tokens, at most {config.max_prompt_bytes_per_token} bytes a token)",
                request_id,
            )


def _check_sampling(sampling: pb.SamplingParams, limits: TierLimits, request_id: str) -> None:
    if sampling.max_tokens < 0:
        raise _refuse(pb.INVALID_ARGUMENT, f"max_tokens must be >= 0, got {sampling.max_tokens}", request_id)
    if sampling.max_tokens > limits.max_tokens:
        raise _refuse(
            pb.INVALID_ARGUMENT,
            f"max_tokens {sampling.max_tokens} is above this tier's limit of {limits.max_tokens}",
            request_id,
        )
    if not math.isfinite(sampling.temperature) or sampling.temperature < 0:
        raise _refuse(
            pb.INVALID_ARGUMENT,
            f"temperature must be a finite number >= 0, got {sampling.temperature}",
            request_id,
        )
    if sampling.HasField("top_p") and not (0 < sampling.top_p <= 1):
        raise _refuse(pb.INVALID_ARGUMENT, f"top_p must be in (0, 1], got {sampling.top_p}", request_id)
    if sampling.top_k < 0:
        raise _refuse(pb.INVALID_ARGUMENT, f"top_k must be >= 0, got {sampling.top_k}", request_id)
    if len(sampling.stop) > MAX_STOP_STRINGS:
        raise _refuse(pb.INVALID_ARGUMENT, f"at most {MAX_STOP_STRINGS} stop strings", request_id)
    for stop in sampling.stop:
        if not stop or len(stop) > MAX_STOP_CHARS:
            raise _refuse(
                pb.INVALID_ARGUMENT, f"stop strings must have 1 to {MAX_STOP_CHARS} characters", request_id
            )


def _check_size(text_bytes: int, limits: TierLimits, what: str, request_id: str) -> None:
    if text_bytes > limits.max_prompt_bytes:
        raise _refuse(
            pb.TOO_LARGE,
            f"{what} is {text_bytes} bytes; this tier accepts at most {limits.max_prompt_bytes}",
            request_id,
        )


def validate_generate(
    request: pb.GenerateRequest,
    config: BrokerConfig,
    limits: dict[str, TierLimits],
    models: TaskModels | ModelView,
) -> AdmittedRequest:
    request_id = request.request_id
    tier = request.tier or config.default_tier
    tier_limits = _check_common(request, tier, limits)
    if not request.prompt:
        raise _refuse(pb.INVALID_ARGUMENT, "prompt is empty", request_id)
    _check_size(utf8_len(request.prompt), tier_limits, "prompt", request_id)
    view = ModelView.of(models)
    model = resolve_model(request.model, pb.TASK_KIND_GENERATE, view, request_id)
    _check_context([request.prompt], pb.TASK_KIND_GENERATE, model, view, config, request_id)
    _check_sampling(request.sampling, tier_limits, request_id)
    sampling = pb.SamplingParams()
    sampling.CopyFrom(request.sampling)
    if sampling.max_tokens == 0:
        sampling.max_tokens = min(config.default_max_tokens, tier_limits.max_tokens)
    return AdmittedRequest(
        request_id=request_id,
        kind=pb.TASK_KIND_GENERATE,
        model=model,
        tier=tier,
        tenant=request.tenant or DEFAULT_TENANT,
        deadline_ms=request.deadline_ms or tier_limits.deadline_ms,
        prompt=request.prompt,
        sampling=sampling,
        is_final_only=request.is_final_only,
    )


def validate_pooling(
    request: pb.EmbedRequest | pb.ClassifyRequest,
    kind: pb.TaskKind,
    config: BrokerConfig,
    limits: dict[str, TierLimits],
    models: TaskModels | ModelView,
) -> AdmittedRequest:
    """Embed and classify requests: a list of texts instead of a prompt."""
    request_id = request.request_id
    tier = request.tier or config.default_tier
    tier_limits = _check_common(request, tier, limits)
    if not request.inputs:
        raise _refuse(pb.INVALID_ARGUMENT, "inputs is empty", request_id)
    if len(request.inputs) > config.max_inputs:
        raise _refuse(
            pb.TOO_LARGE,
            f"{len(request.inputs)} inputs; this broker accepts at most {config.max_inputs} per request",
            request_id,
        )
    if any(not text for text in request.inputs):
        raise _refuse(pb.INVALID_ARGUMENT, "inputs must not contain empty strings", request_id)
    _check_size(sum(utf8_len(text) for text in request.inputs), tier_limits, "inputs", request_id)
    view = ModelView.of(models)
    model = resolve_model(request.model, kind, view, request_id)
    _check_context(list(request.inputs), kind, model, view, config, request_id)
    return AdmittedRequest(
        request_id=request_id,
        kind=kind,
        model=model,
        tier=tier,
        tenant=request.tenant or DEFAULT_TENANT,
        deadline_ms=request.deadline_ms or tier_limits.deadline_ms,
        inputs=list(request.inputs),
    )


class AdmissionRules:
    """Limits and defaults per tier, live-request quotas per tenant."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.tier_limits = parse_tier_limits(config)
        self.tenant_quotas = parse_tenant_quotas(config.tenant_quotas)

    def max_queue_depths(self) -> dict[str, int]:
        return {tier: limits.max_queue_depth for tier, limits in self.tier_limits.items()}

    def quota(self, tenant: str) -> int:
        """Live (queued + running) requests the tenant may hold; 0 is no limit."""
        return self.tenant_quotas.get(tenant, self.config.tenant_max_requests)

    def validate(self, message: TaskRequest, models: TaskModels | ModelView) -> AdmittedRequest:
        if isinstance(message, pb.GenerateRequest):
            return validate_generate(message, self.config, self.tier_limits, models)
        kind = pb.TASK_KIND_EMBED if isinstance(message, pb.EmbedRequest) else pb.TASK_KIND_CLASSIFY
        return validate_pooling(message, kind, self.config, self.tier_limits, models)
