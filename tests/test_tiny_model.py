"""The embedded llmos-tiny model: a normal, deterministic Hugging Face directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmos.model_cli import model as model_group
from llmos.tiny_model import MODEL_NAME, default_model_dir, ensure_tiny_model, make_tiny_model

torch.set_num_threads(1)


def directory_bytes(path: Path) -> dict[str, bytes]:
    return {file.name: file.read_bytes() for file in sorted(path.iterdir())}


def test_init_makes_a_directory_transformers_loads(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    assert model.config.model_type == "llama"
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (64, 2)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (4, 2)
    assert model.config.max_position_embeddings == 2048
    assert len(tokenizer) == model.config.vocab_size
    assert 900 <= len(tokenizer) <= 1000
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<s>", "</s>", "<pad>")
    assert (tiny_model_dir / "model.safetensors").is_file()


def test_tokenizer_adds_bos_and_round_trips_text(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "The café in Paris opened at nine o'clock, 42 times."

    token_ids = tokenizer.encode(text)

    assert token_ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(token_ids, skip_special_tokens=True) == text


def test_two_inits_write_identical_files(tiny_model_dir, tmp_path):
    again = make_tiny_model(tmp_path / "again")

    assert directory_bytes(again) == directory_bytes(tiny_model_dir)


def test_ensure_makes_the_model_once(tmp_path):
    path = tmp_path / "models" / MODEL_NAME

    assert ensure_tiny_model(path) == path
    first = (path / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model(path) == path

    assert (path / "model.safetensors").stat().st_mtime_ns == first
    assert [p.name for p in path.parent.iterdir()] == [MODEL_NAME]  # no staging left behind


def test_force_never_replaces_a_directory_that_holds_something_else(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")

    result = CliRunner().invoke(model_group, ["init", "--output", str(tmp_path), "--force"])

    assert result.exit_code == 1
    assert "does not hold a model" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_ensure_refuses_a_directory_that_holds_something_else(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")

    with pytest.raises(FileExistsError):
        ensure_tiny_model(tmp_path)


def test_default_model_dir_lives_under_llmos_home(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMOS_HOME", str(tmp_path))

    assert default_model_dir() == tmp_path / "models" / "llmos-tiny"


def test_model_init_command_prints_the_path(tmp_path):
    output = tmp_path / "tiny"

    result = CliRunner().invoke(model_group, ["init", "--output", str(output)])

    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == str(output)
    assert (output / "config.json").is_file()
