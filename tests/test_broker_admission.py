"""Admission rules: every refusal has a code and a sentence."""

import json

import pytest

from broker.admission import validate_generate, validate_pooling
from broker.config import BrokerConfig
from broker.tiers import parse_tenant_quotas, parse_tier_limits
from llmos.wire import WireError, pb

MODELS = {pb.TASK_KIND_GENERATE: {"tiny"}, pb.TASK_KIND_EMBED: {"minilm"}}


def make_generate(prompt: str = "hello", **fields) -> pb.GenerateRequest:
    sampling = fields.pop("sampling", {})
    request = pb.GenerateRequest(request_id="req-1", prompt=prompt, **fields)
    for name, value in sampling.items():
        setattr(request.sampling, name, value)
    return request


def admit(request: pb.GenerateRequest, config: BrokerConfig | None = None, models=None):
    config = config or BrokerConfig()
    return validate_generate(request, config, parse_tier_limits(config), MODELS if models is None else models)


def refusal(request: pb.GenerateRequest, config: BrokerConfig | None = None, models=None) -> WireError:
    with pytest.raises(WireError) as caught:
        admit(request, config, models)
    assert caught.value.message
    return caught.value


def test_defaults_are_filled_in_and_the_model_resolved():
    admission = admit(make_generate(), BrokerConfig(default_max_tokens=12))
    assert (admission.tier, admission.tenant, admission.model) == ("standard", "default", "tiny")
    assert admission.sampling.max_tokens == 12
    assert admission.kind == pb.TASK_KIND_GENERATE


@pytest.mark.parametrize(
    "sampling, field",
    [
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 100_000}, "max_tokens"),
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -3}, "top_k"),
    ],
)
def test_bad_sampling_is_invalid_argument(sampling, field):
    error = refusal(make_generate(sampling=sampling))
    assert error.code == pb.INVALID_ARGUMENT
    assert field in error.message
    assert error.request_id == "req-1"


def test_empty_prompt_and_missing_id():
    assert refusal(make_generate(prompt="")).code == pb.INVALID_ARGUMENT
    assert refusal(pb.GenerateRequest(prompt="hi")).code == pb.INVALID_ARGUMENT


def test_oversize_prompt_is_too_large():
    error = refusal(make_generate(prompt="x" * 2000), BrokerConfig(max_prompt_bytes=1000))
    assert error.code == pb.TOO_LARGE
    assert "2000 bytes" in error.message


def test_unknown_model_and_tier():
    assert refusal(make_generate(model="gpt-9")).code == pb.UNKNOWN_MODEL
    assert refusal(make_generate(model="minilm")).code == pb.UNKNOWN_MODEL  # not a generator
    error = refusal(make_generate(tier="vip"))
    assert error.code == pb.INVALID_ARGUMENT and "interactive" in error.message


def test_no_worker_yet_is_unknown_model_with_a_retry_hint():
    error = refusal(make_generate(), models={})
    assert error.code == pb.UNKNOWN_MODEL and error.retry_after_ms > 0


def test_bad_stop_strings():
    request = make_generate()
    request.sampling.stop.append("")
    assert refusal(request).code == pb.INVALID_ARGUMENT


def test_tier_limits_override_the_defaults():
    config = BrokerConfig(
        tier_limits=json.dumps(
            {"interactive": {"max_tokens": 32, "deadline_ms": 500, "max_prompt_bytes": 10}}
        )
    )
    limits = parse_tier_limits(config)
    assert limits["interactive"].max_tokens == 32 and limits["batch"].max_tokens == 4096
    assert admit(make_generate(tier="interactive"), config).deadline_ms == 500
    error = refusal(make_generate(tier="interactive", sampling={"max_tokens": 64}), config)
    assert error.code == pb.INVALID_ARGUMENT and "32" in error.message
    assert refusal(make_generate(prompt="x" * 11, tier="interactive"), config).code == pb.TOO_LARGE


@pytest.mark.parametrize(
    "spec", ['{"vip": {}}', '{"batch": {"colour": 1}}', '{"batch": {"max_tokens": -1}}', "[1, 2]"]
)
def test_bad_tier_limits_are_refused_with_a_sentence(spec):
    with pytest.raises(ValueError):
        parse_tier_limits(BrokerConfig(tier_limits=spec))


def test_tenant_quotas_parse():
    assert parse_tenant_quotas("alice=100, bob=2") == {"alice": 100, "bob": 2}
    with pytest.raises(ValueError):
        parse_tenant_quotas("alice")


def test_embed_requests_need_inputs_and_an_embedding_model():
    config = BrokerConfig(max_inputs=2)
    limits = parse_tier_limits(config)
    admission = validate_pooling(
        pb.EmbedRequest(request_id="e", inputs=["a", "b"]), pb.TASK_KIND_EMBED, config, limits, MODELS
    )
    assert admission.model == "minilm" and admission.inputs == ["a", "b"]
    for request, code in [
        (pb.EmbedRequest(request_id="e"), pb.INVALID_ARGUMENT),
        (pb.EmbedRequest(request_id="e", inputs=["a", ""]), pb.INVALID_ARGUMENT),
        (pb.EmbedRequest(request_id="e", inputs=["a"] * 3), pb.TOO_LARGE),
    ]:
        with pytest.raises(WireError) as caught:
            validate_pooling(request, pb.TASK_KIND_EMBED, config, limits, MODELS)
        assert caught.value.code == code
    with pytest.raises(WireError) as caught:
        validate_pooling(
            pb.ClassifyRequest(request_id="c", inputs=["a"]), pb.TASK_KIND_CLASSIFY, config, limits, MODELS
        )
    assert caught.value.code == pb.UNKNOWN_MODEL
