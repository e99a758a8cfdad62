"""Admission rules: every refusal has a code and a sentence."""

import pytest

from broker.admission import validate_generate
from broker.config import BrokerConfig
from llmos.wire import WireError, pb


def make_generate(prompt: str = "hello", **fields) -> pb.GenerateRequest:
    sampling = fields.pop("sampling", {})
    request = pb.GenerateRequest(request_id="req-1", prompt=prompt, **fields)
    for name, value in sampling.items():
        setattr(request.sampling, name, value)
    return request


def refusal(request: pb.GenerateRequest, config: BrokerConfig | None = None, models=("tiny",)) -> WireError:
    with pytest.raises(WireError) as caught:
        validate_generate(request, config or BrokerConfig(), set(models))
    assert caught.value.message
    return caught.value


def test_defaults_are_filled_in():
    normalized = validate_generate(make_generate(), BrokerConfig(default_max_tokens=12), {"tiny"})
    assert normalized.tier == "standard"
    assert normalized.tenant == "default"
    assert normalized.sampling.max_tokens == 12


@pytest.mark.parametrize("sampling, field", [
    ({"max_tokens": -1}, "max_tokens"),
    ({"max_tokens": 100_000}, "max_tokens"),
    ({"temperature": -0.5}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -3}, "top_k"),
])
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
    error = refusal(make_generate(tier="vip"))
    assert error.code == pb.INVALID_ARGUMENT and "interactive" in error.message


def test_bad_stop_strings():
    request = make_generate()
    request.sampling.stop.append("")
    assert refusal(request).code == pb.INVALID_ARGUMENT
