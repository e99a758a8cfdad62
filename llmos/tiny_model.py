"""The embedded default model, `llmos-tiny`: made locally in seconds, never downloaded.

A two-layer Llama with deterministic random weights and a byte-level BPE
tokenizer trained on the short corpus below, saved as a normal Hugging Face
directory, so every code path that loads a real model loads this one too.

Random-weight models usually have near-tied logits, so greedy decoding could
flip between two code paths that differ only in rounding. The weights here are
drawn wide on purpose (see `_separate_logits`) so the top token wins by a
margin far larger than float32 rounding, and tests can demand token-for-token
equality with `model.generate`.

torch, transformers and tokenizers are imported inside the functions: this
module is imported by the CLI, which must stay fast to start.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

# what a maker calls as it starts each of its MAKE_STEPS steps (`llmos model init` shows a bar)
OnStep = Callable[[str], None]
Maker = Callable[[Path, OnStep | None], Path]  # writes a model into a directory
MAKE_STEPS = ("training the tokenizer", "building the model", "saving the model")
MODEL_NAME = "llmos-tiny"
SEED = 1234
VOCAB_SIZE = 1000
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<pad>", "<s>", "</s>"

# Wider than the usual 0.02 so attention is sharp and the context matters.
INITIALIZER_RANGE = 0.2
# lm_head std; RMS-normed hidden states of size 64 give logits with std ~ 8 x this.
LM_HEAD_STD = 0.6

CORPUS = """\
The harbour was quiet before dawn. Fishing boats rocked against the stone pier,
their ropes creaking in the cold wind, and the gulls had not yet started their
morning argument over the nets. An old man sat on an upturned crate, mending a
sail with a curved needle, counting the stitches under his breath: one, two,
three, four, five. He had done this every winter for forty-two years.

Computers do exactly what they are told, which is rarely what we meant. A
program is a list of small, precise steps: read a number, add it to another,
store the result, and jump back to the start of the loop until the work is
done. When a server answers a request, it parses the message, checks that it
is valid, does the work, and sends a reply. Good engineers write tests that
prove each step behaves, and they measure before they optimise.

To bake a simple loaf of bread, mix five hundred grams of flour with ten grams
of salt, seven grams of yeast and three hundred and fifty millilitres of warm
water. Knead the dough for ten minutes until it is smooth and elastic, then let
it rise in a covered bowl for an hour. Shape it, let it rise again, and bake it
in a hot oven for thirty-five minutes. The crust should sound hollow when you
tap it.

The library opened at nine o'clock. Students hurried between the long shelves,
looking for books on history, physics, music and the languages of the world.
A girl named Zoë read a novel about a café in Paris; her friend Jürgen studied
the old maps of the river, where the city had grown from a small village of
farmers and traders. "Knowledge is a garden," the librarian liked to say, "and
every reader plants something new."

In the mountains the weather changes quickly. A clear blue sky at noon can turn
into a storm by three, with thunder rolling down the valley and rain drumming on
the roof of the hut. Experienced walkers carry a map, a compass, water, food
and a warm jacket, and they turn back when the clouds gather. The summit will
still be there tomorrow; the careless climber may not.

Language models predict the next token from the tokens before it. A token may
be a word, part of a word, a space or a single byte. Given a prompt, the model
computes a probability for every token in its vocabulary, picks one, appends
it, and repeats. Greedy decoding always picks the most likely token; sampling
draws one at random, shaped by the temperature, top-k and top-p settings.
"""


def default_model_dir() -> Path:
    """`$LLMOS_HOME/models/llmos-tiny` (LLMOS_HOME defaults to ~/.cache/llmos)."""
    home = os.environ.get("LLMOS_HOME") or Path.home() / ".cache" / "llmos"
    return Path(home).expanduser() / "models" / MODEL_NAME


def is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "tokenizer.json").is_file()


def ensure_model(path: Path, make: Maker, on_step: OnStep | None = None) -> Path:
    """Make a model at `path` with `make(directory, on_step)` unless one is there (every
    embedded model: tiny, the classifier, the demo model)."""
    if not is_model_dir(path):
        _make_atomically(path, replace=False, make=make, on_step=on_step)
    return path


def remake_model(path: Path, make: Maker, on_step: OnStep | None = None) -> Path:
    """Make a model at `path` with `make`, replacing whatever model is there."""
    _make_atomically(path, replace=True, make=make, on_step=on_step)
    return path


def ensure_tiny_model(path: Path | None = None, on_step: OnStep | None = None) -> Path:
    """Make the tiny model at `path` (default `default_model_dir()`) unless it is there."""
    return ensure_model(Path(path) if path is not None else default_model_dir(), make_tiny_model, on_step)


def remake_tiny_model(path: Path, on_step: OnStep | None = None) -> Path:
    """Make the tiny model at `path`, replacing whatever is there."""
    return remake_model(Path(path), make_tiny_model, on_step)


def _make_atomically(path: Path, replace: bool, make: Maker, on_step: OnStep | None) -> None:
    """`make(directory, on_step)` writes the model into a fresh directory beside `path`."""
    # Build next to the target, then rename: a concurrent start never sees half
    # a model, and whoever renames first wins.
    if path.exists() and any(path.iterdir()) and not is_model_dir(path):
        # never delete (or write into) a directory that holds something else
        raise FileExistsError(f"{path} exists and does not hold a model; choose another directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        make(staging, on_step)
        staging.chmod(0o755)  # mkdtemp makes it private; a model directory is not
        if replace and is_model_dir(path):
            shutil.rmtree(path)
        try:
            staging.rename(path)  # atomic; onto an empty directory too
        except OSError:
            if not is_model_dir(path):  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def make_tiny_model(output_dir: Path, on_step: OnStep | None = None) -> Path:
    """Write the tiny model and its tokenizer to `output_dir`; return the directory."""
    step = on_step or (lambda _: None)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    step(MAKE_STEPS[0])
    tokenizer = _make_tokenizer()
    step(MAKE_STEPS[1])
    model = _make_model(tokenizer)
    step(MAKE_STEPS[2])
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def _make_tokenizer():  # -> transformers.PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special_tokens = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=special_tokens,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS.splitlines(keepends=True), trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    # Llama-style: every encoded prompt starts with BOS.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )


def _make_model(tokenizer):  # -> transformers.LlamaForCausalLM
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=2048,
        initializer_range=INITIALIZER_RANGE,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    _separate_logits(model, torch.Generator().manual_seed(SEED))
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    return model.eval()


def _separate_logits(model, generator) -> None:
    """Redraw lm_head wide so the top logit leads by far more than rounding error."""
    import torch

    with torch.no_grad():
        weight = model.lm_head.weight
        weight.copy_(torch.randn(weight.shape, generator=generator) * LM_HEAD_STD)
