"""Between wire messages and the engine's plain data."""

from __future__ import annotations

from llmos.wire import pb
from llmos.wire.constants import DEFAULT_MAX_TOKENS
from workers.requests import Delta, EngineRequest, SamplingOptions


def max_tokens_of(sampling: pb.SamplingParams) -> int:
    """0 means "the broker's default"; a broker normally fills it in already."""
    return sampling.max_tokens or DEFAULT_MAX_TOKENS


def sampling_options(sampling: pb.SamplingParams) -> SamplingOptions:
    return SamplingOptions(
        max_tokens=max_tokens_of(sampling),
        temperature=sampling.temperature,
        top_p=sampling.top_p if sampling.HasField("top_p") else 1.0,
        top_k=sampling.top_k,
        stop=tuple(sampling.stop),
        seed=sampling.seed if sampling.HasField("seed") else None,
    )


def engine_request(dispatch: pb.Dispatch, prompt_token_ids: list[int]) -> EngineRequest:
    return EngineRequest(
        request_id=dispatch.request_id,
        prompt_token_ids=prompt_token_ids,
        sampling=sampling_options(dispatch.sampling),
        generated_token_ids=list(dispatch.generated_token_ids),
        emitted_text_chars=dispatch.emitted_text_chars,
    )


def request_delta(delta: Delta) -> pb.RequestDelta:
    message = pb.RequestDelta(
        request_id=delta.request_id,
        token_ids=delta.token_ids,
        text=delta.text,
        prompt_tokens=delta.prompt_tokens,
        is_finished=delta.is_finished,
        finish_reason=delta.finish_reason,
    )
    if delta.error_code != pb.ERROR_CODE_UNSPECIFIED:
        message.error.CopyFrom(
            pb.Error(code=delta.error_code, message=delta.error_message, request_id=delta.request_id)
        )
    for values in delta.embeddings:
        message.embeddings.add(values=values)
    for scores in delta.classifications:
        message.classifications.append(classification(scores))
    return message


def classification(scores: list[tuple[str, float]]) -> pb.Classification:
    """Every label's score in model order, and the top one (the first, on a tie)."""
    label, score = max(scores, key=lambda label_score: label_score[1])
    return pb.Classification(
        label=label, score=score, scores=[pb.LabelScore(label=name, score=value) for name, value in scores]
    )
