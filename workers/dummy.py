"""`--model dummy:<preset>`: a real architecture with random weights and no files.

Like vLLM's `--load-format dummy`: the model has the shape and cost of a real
one, so benchmarks and capacity tests need no download, but its text is noise.

Weights are seeded, so a preset gives the same model on every run (per device:
CUDA draws from its own generator). transformers' default init (std 0.02)
leaves logits with std ~0.5 over 32,000 tokens, close to uniform; the output
head is redrawn so logits have std ~`LOGIT_STD` and greedy decoding has a clear
winner at each step instead of near-ties that flip with rounding.

The tokenizer is the embedded llmos-tiny byte-level BPE (983 tokens, trained
on `llmos.tiny_model.CORPUS`), extended to the preset's vocabulary: every id
past the BPE's decodes to the text ` <id>` (e.g. ` <31999>`), and none of them
is ever produced by encoding, so any text encodes, any id decodes, and both are
deterministic. No file is read or written.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

DUMMY_PREFIX = "dummy:"
SEED = 0
LOGIT_STD = 4.0
BYTE_LEVEL_SPACE = "\u0120"  # how the byte-level alphabet writes " " ("Ġ")
# The base tokenizer's trainer puts its special tokens first: <pad>, <s>, </s>.
PAD_TOKEN_ID, BOS_TOKEN_ID, EOS_TOKEN_ID = 0, 1, 2


@dataclass(frozen=True)
class DummyPreset:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int = 2048


DUMMY_PRESETS: dict[str, DummyPreset] = {
    # the shape of the embedded llmos-tiny; for tests (~0.2M parameters)
    "llama-tiny": DummyPreset(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=1024,
    ),
    # GPT-2-small-sized body (~85M) plus embeddings and an untied head: ~134M parameters.
    # Untied on purpose: a tied random head scores each token's own embedding highest,
    # so greedy decoding repeats the last prompt token forever.
    "llama-100m": DummyPreset(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        intermediate_size=2048,
        vocab_size=32000,
    ),
    # a Llama-3.2-1B-like shape with a Llama-2 vocabulary (~1.1B parameters)
    "llama-1b": DummyPreset(
        hidden_size=2048,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=8192,
        vocab_size=32000,
    ),
}


def dummy_preset_name(model: str) -> str | None:
    """The preset of a `dummy:<preset>` model spec; None when `model` is not one.

    Raises ValueError for a dummy spec whose preset does not exist."""
    if not model.startswith(DUMMY_PREFIX):
        return None
    name = model[len(DUMMY_PREFIX) :]
    if name not in DUMMY_PRESETS:
        raise ValueError(
            f"unknown dummy model {model!r}; choose one of "
            + ", ".join(DUMMY_PREFIX + preset for preset in DUMMY_PRESETS)
        )
    return name


def dummy_config(preset: str) -> Any:  # -> transformers.LlamaConfig
    from transformers import LlamaConfig

    return LlamaConfig(
        **asdict(DUMMY_PRESETS[preset]),
        bos_token_id=BOS_TOKEN_ID,
        eos_token_id=EOS_TOKEN_ID,
        pad_token_id=PAD_TOKEN_ID,
    )


def build_dummy_model(
    preset: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> Any:
    """The preset's model with seeded random weights, built directly on `device`
    (`meta` builds the shapes only, for counting parameters)."""
    from transformers import GenerationConfig, LlamaForCausalLM

    config = dummy_config(preset)
    device = torch.device(device)
    cuda_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):  # leave the caller's RNG as it was
        torch.manual_seed(SEED)
        with torch.device(device):
            model = LlamaForCausalLM._from_config(config, dtype=dtype)
        with torch.no_grad():  # see the module doc
            head_std = LOGIT_STD / math.sqrt(config.hidden_size)
            model.get_output_embeddings().weight.normal_(0.0, head_std)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    return model.eval()


def build_dummy_tokenizer(preset: str) -> Any:  # -> transformers.PreTrainedTokenizerFast
    """The llmos-tiny BPE extended to the preset's vocabulary (see the module doc)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from llmos.tiny_model import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN
    from llmos.tiny_model import _make_tokenizer as make_base_tokenizer  # in memory, no files

    base = make_base_tokenizer()
    assert (base.pad_token_id, base.bos_token_id, base.eos_token_id) == (
        PAD_TOKEN_ID,
        BOS_TOKEN_ID,
        EOS_TOKEN_ID,
    )
    data = json.loads(base.backend_tokenizer.to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    vocab_size = DUMMY_PRESETS[preset].vocab_size
    assert vocab_size >= len(vocab), f"{preset}: vocabulary smaller than the base tokenizer's"
    for token_id in range(len(vocab), vocab_size):
        token = f"{BYTE_LEVEL_SPACE}<{token_id}>"
        assert token not in vocab, token
        vocab[token] = token_id
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)),
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        clean_up_tokenization_spaces=False,
        model_max_length=DUMMY_PRESETS[preset].max_position_embeddings,
    )
