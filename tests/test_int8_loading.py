"""`--quantization int8` loads a checkpoint in its own dtype and rounds it linear by
linear: the weights are those of the checkpoint loaded in float32 and rounded by
torch's `quantize_dynamic`, no float linear waits for the garbage collector, and no
mapping of a 16-bit checkpoint's file outlives the load."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from workers.config import WorkerConfig
from workers.dummy import build_dummy_model, build_dummy_tokenizer
from workers.model_loader import load_model
from workers.quantization import HEAD_INT8, quantize_dynamic_int8, quantize_int8

PRESET = "llama-tiny"
PROMPT_IDS = torch.arange(1, 24).unsqueeze(0)


def save_checkpoint(directory: Path, dtype: torch.dtype) -> Path:
    model = build_dummy_model(PRESET).to(dtype)
    model.save_pretrained(directory)
    build_dummy_tokenizer(PRESET).save_pretrained(directory)
    return directory


def load_int8(path: Path):
    return load_model(WorkerConfig(model=str(path), device="cpu", quantization="int8")).model


def rounded_by_torch(path: Path):
    """The checkpoint loaded in float32 and rounded by torch's own quantize_dynamic."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True).eval()
    quantize_dynamic_int8(model)
    return model


def int8_weights(model) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {
        name: (module.weight().int_repr(), module.weight().q_per_channel_scales())
        for name, module in model.named_modules()
        if isinstance(module, torch.ao.nn.quantized.dynamic.Linear)
    }


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_a_checkpoint_rounds_to_the_int8_weights_of_the_checkpoint_loaded_in_float32(tmp_path, dtype):
    path = save_checkpoint(tmp_path / "checkpoint", dtype)
    loaded, reference = load_int8(path), rounded_by_torch(path)

    ours, theirs = int8_weights(loaded), int8_weights(reference)
    assert ours.keys() == theirs.keys() and len(ours) == 2 * 7  # 2 layers, 7 linears each
    for name, (values, scales) in ours.items():
        assert torch.equal(values, theirs[name][0]) and torch.equal(scales, theirs[name][1]), name
    assert {tensor.dtype for tensor in [*loaded.parameters(), *loaded.buffers()]} == {torch.float32}
    assert loaded.dtype == torch.float32 and loaded.config.dtype == torch.float32
    embeddings = reference.get_input_embeddings().weight
    assert torch.equal(loaded.get_input_embeddings().weight, embeddings)
    int8, scales = getattr(loaded.get_output_embeddings(), HEAD_INT8)
    assert torch.equal(loaded.get_output_embeddings().weight, int8.float() * scales[:, None])
    with torch.inference_mode():
        # the body's products are the same; only the head's weights are rounded on our side
        reference.get_output_embeddings().weight.copy_(loaded.get_output_embeddings().weight)
        assert torch.equal(loaded(PROMPT_IDS).logits, reference(PROMPT_IDS).logits)


def test_each_float_linear_is_freed_as_it_is_rounded_not_by_the_garbage_collector():
    model = build_dummy_model(PRESET)
    head = model.get_output_embeddings()
    weights = [
        weakref.ref(module.weight)
        for module in model.modules()
        if isinstance(module, torch.nn.Linear) and module is not head
    ]
    gc.disable()
    try:
        assert quantize_int8(model) == len(weights)
        assert [weight() for weight in weights] == [None] * len(weights)
    finally:
        gc.enable()


def test_no_mapping_of_a_16_bit_checkpoint_outlives_an_int8_load(tmp_path):
    path = save_checkpoint(tmp_path / "checkpoint", torch.bfloat16)
    model = load_int8(path)
    mapped = [line for line in Path("/proc/self/maps").read_text().splitlines() if str(path) in line]
    assert mapped == [] and model is not None
