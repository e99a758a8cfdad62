"""The embedded llmos-demo model: trained, shipped in the package, and it answers in words."""

from __future__ import annotations

import math

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from llmos import demo_corpus
from llmos.demo_model import (
    MODEL_NAME,
    PACKAGED_DIR,
    SEED,
    corpus_split,
    default_model_dir,
    ensure_demo_model,
)
from llmos.model_cli import model as model_group
from llmos.tiny_model import CORPUS

torch.set_num_threads(1)

DEMO_PROMPT = "Hello! How can I help you today?"
NUM_HELD_OUT_CHATS = 40


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(PACKAGED_DIR)


@pytest.fixture(scope="module")
def trained():
    return AutoModelForCausalLM.from_pretrained(PACKAGED_DIR).eval()


@pytest.fixture(scope="module")
def untrained():
    """The same architecture, initialised as the training script starts it."""
    torch.manual_seed(SEED)
    return LlamaForCausalLM(AutoConfig.from_pretrained(PACKAGED_DIR)).eval()


@pytest.fixture(scope="module")
def held_out_token_ids(tokenizer) -> list[list[int]]:
    _, held_out = corpus_split()
    return [tokenizer.encode(demo_corpus.render_chat(chat)) for chat in held_out[:NUM_HELD_OUT_CHATS]]


def perplexity(model, token_ids: list[list[int]]) -> float:
    total_nll, num_tokens = 0.0, 0
    with torch.no_grad():
        for ids in token_ids:
            input_ids = torch.tensor([ids])
            loss = model(input_ids=input_ids, labels=input_ids).loss
            total_nll += loss.item() * (len(ids) - 1)
            num_tokens += len(ids) - 1
    return math.exp(total_nll / num_tokens)


def greedy_answer(model, tokenizer, user_text: str, max_new_tokens: int = 64) -> tuple[str, bool]:
    """(answer text, whether it ended with EOS)."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": user_text}], tokenize=False, add_generation_prompt=True
    )
    input_ids = torch.tensor([tokenizer.encode(prompt)])
    output = model.generate(input_ids, do_sample=False, max_new_tokens=max_new_tokens)
    new_ids = output[0, input_ids.shape[1] :].tolist()
    return tokenizer.decode(new_ids, skip_special_tokens=True), new_ids[-1] == tokenizer.eos_token_id


def test_the_packaged_model_loads_as_a_small_float32_llama(trained, tokenizer):
    assert trained.config.model_type == "llama"
    assert trained.dtype == torch.float32
    assert len(tokenizer) == trained.config.vocab_size == 2048
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<s>", "</s>", "<pad>")
    assert sum(path.stat().st_size for path in PACKAGED_DIR.iterdir()) < 4_000_000


def test_the_chat_template_renders_the_format_the_model_learnt(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "When are you open?"},
    ]

    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    assert rendered == (
        "<|system|>\nBe brief.\n<|user|>\nHi!\n<|assistant|>\nHello!</s>\n"
        "<|user|>\nWhen are you open?\n<|assistant|>\n"
    )
    assert rendered == demo_corpus.render_chat(messages, add_generation_prompt=True)
    token_ids = tokenizer.encode(rendered)
    assert token_ids[:2] == [tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids("<|system|>")]


def test_held_out_perplexity_is_far_below_the_untrained_models(trained, untrained, held_out_token_ids):
    trained_perplexity = perplexity(trained, held_out_token_ids)
    untrained_perplexity = perplexity(untrained, held_out_token_ids)

    assert trained_perplexity * 5 < untrained_perplexity
    assert trained_perplexity < 5


def test_the_greedy_answer_to_the_demo_prompt_is_words_and_stops(trained, tokenizer):
    train, _ = corpus_split()
    vocabulary = demo_corpus.words(CORPUS + "".join(demo_corpus.render_chat(chat) for chat in train))

    answer, has_stopped = greedy_answer(trained, tokenizer, DEMO_PROMPT)
    answer_words = [word.lower() for word in demo_corpus.WORD.findall(answer)]

    assert has_stopped, answer
    assert len(answer_words) >= 5, answer
    assert sum(word in vocabulary for word in answer_words) >= 0.8 * len(answer_words), answer


def test_model_init_copies_the_packaged_model(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMOS_HOME", str(tmp_path))

    result = CliRunner().invoke(model_group, ["init"])

    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == str(default_model_dir())
    assert default_model_dir() == tmp_path / "models" / MODEL_NAME
    copied = {path.name: path.read_bytes() for path in default_model_dir().iterdir()}
    assert copied == {path.name: path.read_bytes() for path in PACKAGED_DIR.iterdir()}
    assert ensure_demo_model() == default_model_dir()  # there already: left as it is
