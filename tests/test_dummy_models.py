"""`--model dummy:<preset>`: real architectures with seeded random weights, no files."""

from __future__ import annotations

import pytest
import torch

from workers.config import WorkerConfig
from workers.dummy import (
    DUMMY_PRESETS,
    EOS_TOKEN_ID,
    LOGIT_STD,
    build_dummy_model,
    build_dummy_tokenizer,
    dummy_preset_name,
)
from workers.model_loader import load_model, load_tokenizer, resolve_model_path
from workers.reference_engine import ReferenceEngine
from workers.requests import EngineRequest, SamplingOptions

torch.set_num_threads(1)


def llama_parameter_count(preset: str) -> int:
    """Parameters of a Llama of this shape, from the arithmetic of its layers."""
    p = DUMMY_PRESETS[preset]
    head_dim = p.hidden_size // p.num_attention_heads
    attention = (
        2 * p.hidden_size * p.num_attention_heads * head_dim
        + 2 * p.hidden_size * p.num_key_value_heads * head_dim
    )  # q, o and k, v
    mlp = 3 * p.hidden_size * p.intermediate_size  # gate, up, down
    norms = 2 * p.hidden_size
    embeddings_and_head = 2 * p.vocab_size * p.hidden_size  # untied
    return p.num_hidden_layers * (attention + mlp + norms) + p.hidden_size + embeddings_and_head


@pytest.mark.parametrize("preset", list(DUMMY_PRESETS))
def test_each_preset_builds_its_shape_on_the_meta_device(preset):
    model = build_dummy_model(preset, "meta")

    num_parameters = sum(parameter.numel() for parameter in model.parameters())
    assert num_parameters == llama_parameter_count(preset)
    assert model.config.vocab_size == DUMMY_PRESETS[preset].vocab_size
    assert model.device.type == "meta"


def test_preset_sizes_match_their_names():
    assert llama_parameter_count("llama-tiny") < 1_000_000
    assert 100e6 <= llama_parameter_count("llama-100m") < 150e6
    assert 1.0e9 <= llama_parameter_count("llama-1b") < 1.2e9


def test_dummy_spec_names_a_preset_or_is_refused():
    assert dummy_preset_name("dummy:llama-100m") == "llama-100m"
    assert dummy_preset_name("/models/llama") is None
    with pytest.raises(ValueError, match="dummy:llama-tiny, dummy:llama-100m, dummy:llama-1b"):
        dummy_preset_name("dummy:gpt-5")
    with pytest.raises(SystemExit, match="unknown dummy model 'dummy:gpt-5'"):
        resolve_model_path(WorkerConfig(model="dummy:gpt-5"))


def test_weights_are_seeded_and_leave_the_callers_rng_alone():
    rng_state = torch.get_rng_state()
    first = build_dummy_model("llama-tiny")
    second = build_dummy_model("llama-tiny")

    assert torch.equal(torch.get_rng_state(), rng_state)
    for (name, a), (_, b) in zip(first.named_parameters(), second.named_parameters()):
        assert torch.equal(a, b), name


def test_output_head_is_drawn_wide_enough_for_clear_logits():
    model = build_dummy_model("llama-tiny")
    with torch.inference_mode():
        logits = model(torch.tensor([[1, 50, 60, 70]])).logits[0, -1]

    assert LOGIT_STD / 2 < logits.std().item() < LOGIT_STD * 2
    top2 = logits.topk(2).values
    assert top2[0] - top2[1] > 1e-3  # far above float32 rounding


def test_tokenizer_covers_the_whole_vocabulary():
    tokenizer = build_dummy_tokenizer("llama-100m")
    text = "The harbour was quiet before dawn."

    assert len(tokenizer) == 32000
    assert tokenizer.decode(tokenizer.encode(text), skip_special_tokens=True) == text
    assert tokenizer.decode([31999, 5000]) == " <31999> <5000>"
    assert tokenizer.eos_token_id == EOS_TOKEN_ID
    assert max(tokenizer.encode(text * 20)) < 1000  # encoding uses only the base BPE's ids


def test_tiny_preset_loads_through_the_worker_loader_and_generates():
    config = WorkerConfig(model="dummy:llama-tiny", device="cpu")
    loaded = load_model(config)
    tokenizer = load_tokenizer(loaded.path)
    prompt_token_ids = tokenizer.encode("The harbour was quiet")

    engine = ReferenceEngine(loaded.model, tokenizer, max_num_seqs=1, eos_token_ids=set())
    engine.add_request(EngineRequest("r1", prompt_token_ids, SamplingOptions(max_tokens=6)))
    token_ids: list[int] = []
    while engine.has_work:
        for delta in engine.step():
            token_ids += delta.token_ids
    expected = loaded.model.generate(
        torch.tensor([prompt_token_ids]), max_new_tokens=6, min_new_tokens=6, do_sample=False
    )[0, len(prompt_token_ids) :]

    assert (loaded.name, loaded.dtype, loaded.max_model_len) == ("dummy:llama-tiny", torch.float32, 2048)
    assert token_ids == expected.tolist()
    assert len(token_ids) == 6
