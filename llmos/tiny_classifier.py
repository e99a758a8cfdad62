"""`llmos-tiny-classifier`: a sentiment-shaped sequence classifier, made locally in seconds.

The llmos-tiny Llama body and tokenizer with a two-label head
(`{0: "negative", 1: "positive"}`), deterministic random weights, saved as a
normal Hugging Face directory (`LlamaForSequenceClassification`), so a worker
started on it with `--task auto` serves ClassifyRequest. Its labels are noise:
it exists so the classification path runs end to end with nothing downloaded.

Light to import, like `llmos.tiny_model`.
"""

from __future__ import annotations

import os
from pathlib import Path

from llmos import tiny_model

MODEL_NAME = "llmos-tiny-classifier"
SEED = 4321
LABELS = {0: "negative", 1: "positive"}
# Wide, as in llmos-tiny: the two labels' scores differ clearly from input to input.
INITIALIZER_RANGE = 0.2


def default_model_dir() -> Path:
    """`$LLMOS_HOME/models/llmos-tiny-classifier` (LLMOS_HOME defaults to ~/.cache/llmos)."""
    home = os.environ.get("LLMOS_HOME") or Path.home() / ".cache" / "llmos"
    return Path(home).expanduser() / "models" / MODEL_NAME


def ensure_tiny_classifier(path: Path | None = None, on_step: tiny_model.OnStep | None = None) -> Path:
    """Make the classifier at `path` (default `default_model_dir()`) unless it is there."""
    path = Path(path) if path is not None else default_model_dir()
    return tiny_model.ensure_model(path, make_tiny_classifier, on_step)


def remake_tiny_classifier(path: Path, on_step: tiny_model.OnStep | None = None) -> Path:
    """Make the classifier at `path`, replacing whatever model is there."""
    return tiny_model.remake_model(Path(path), make_tiny_classifier, on_step)


def make_tiny_classifier(output_dir: Path, on_step: tiny_model.OnStep | None = None) -> Path:
    """Write the classifier and its tokenizer to `output_dir`; return the directory."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    step = on_step or (lambda _: None)
    step(tiny_model.MAKE_STEPS[0])
    tokenizer = tiny_model._make_tokenizer()
    step(tiny_model.MAKE_STEPS[1])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=2048,
        initializer_range=INITIALIZER_RANGE,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        # the head scores each row's last token that is not padding: batches need the pad id
        pad_token_id=tokenizer.pad_token_id,
        # num_labels, the head's width, is len(id2label)
        id2label=LABELS,
        label2id={v: k for k, v in LABELS.items()},
        problem_type="single_label_classification",
    )
    torch.manual_seed(SEED)
    model = LlamaForSequenceClassification(config).eval()
    step(tiny_model.MAKE_STEPS[2])
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir
