"""The embedded default model, `llmos-demo`: a small trained Llama shipped inside the package.

scripts/train_demo_model.py trained it once on CPU from llmos.demo_corpus
(customer-service chats) and llmos.tiny_model.CORPUS, and its Hugging Face
directory (float16 safetensors, a byte-level BPE tokenizer with a chat template)
lives in llmos/models/llmos-demo/. `ensure_demo_model` copies it under
$LLMOS_HOME/models: nothing is trained or downloaded at run time.

The random-weight `llmos-tiny` (llmos.tiny_model) stays what the tests use.
Light to import: no torch here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from llmos import demo_corpus, tiny_model

MODEL_NAME = "llmos-demo"
PACKAGED_DIR = Path(__file__).resolve().parent / "models" / MODEL_NAME
SEED = 1234
VOCAB_SIZE = 2048
NUM_DIALOGUES = 6000
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = tiny_model.PAD_TOKEN, tiny_model.BOS_TOKEN, tiny_model.EOS_TOKEN
ROLE_TOKENS = tuple(f"<|{role}|>" for role in demo_corpus.ROLES)
MAKE_STEPS = ("copying the model",)  # what `llmos model init` shows


def corpus_split() -> tuple[list, list]:
    """(training chats, held-out chats) of the generated corpus the model learnt from."""
    return demo_corpus.split(demo_corpus.dialogues(NUM_DIALOGUES, SEED))


def default_model_dir() -> Path:
    """`$LLMOS_HOME/models/llmos-demo` (LLMOS_HOME defaults to ~/.cache/llmos)."""
    return tiny_model.default_model_dir().parent / MODEL_NAME


def ensure_demo_model(path: Path | None = None, on_step: tiny_model.OnStep | None = None) -> Path:
    """Copy the packaged model to `path` (default `default_model_dir()`) unless it is there."""
    path = Path(path) if path is not None else default_model_dir()
    return tiny_model.ensure_model(path, copy_demo_model, on_step)


def remake_demo_model(path: Path, on_step: tiny_model.OnStep | None = None) -> Path:
    """Copy the packaged model to `path`, replacing whatever model is there."""
    return tiny_model.remake_model(Path(path), copy_demo_model, on_step)


def copy_demo_model(output_dir: Path, on_step: tiny_model.OnStep | None = None) -> Path:
    if not tiny_model.is_model_dir(PACKAGED_DIR):
        raise FileNotFoundError(f"the packaged {MODEL_NAME} is missing from {PACKAGED_DIR}")
    if on_step is not None:
        on_step(MAKE_STEPS[0])
    shutil.copytree(PACKAGED_DIR, output_dir, dirs_exist_ok=True)
    return Path(output_dir)
