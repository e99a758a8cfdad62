"""The embedded llmos-tiny-classifier: a deterministic sequence-classification directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from llmos.model_cli import model as model_group
from llmos.tiny_classifier import MODEL_NAME, default_model_dir, make_tiny_classifier

torch.set_num_threads(1)


def directory_bytes(path: Path) -> dict[str, bytes]:
    return {file.name: file.read_bytes() for file in sorted(path.iterdir())}


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> Path:
    return make_tiny_classifier(tmp_path_factory.mktemp("models") / MODEL_NAME)


def test_it_loads_as_a_two_label_sentiment_classifier_with_the_tiny_tokenizer(classifier_dir, tiny_model_dir):
    model = AutoModelForSequenceClassification.from_pretrained(classifier_dir)
    tokenizer = AutoTokenizer.from_pretrained(classifier_dir)

    assert model.config.architectures == ["LlamaForSequenceClassification"]
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert model.config.pad_token_id == tokenizer.pad_token_id is not None
    assert (classifier_dir / "tokenizer.json").read_bytes() == (
        tiny_model_dir / "tokenizer.json"
    ).read_bytes()


def test_two_inits_write_identical_files(classifier_dir, tmp_path):
    assert directory_bytes(make_tiny_classifier(tmp_path / "again")) == directory_bytes(classifier_dir)


def test_model_init_task_classify_makes_it_under_llmos_home(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMOS_HOME", str(tmp_path))

    result = CliRunner().invoke(model_group, ["init", "--task", "classify"])

    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == str(default_model_dir())
    assert default_model_dir() == tmp_path / "models" / MODEL_NAME
    assert (default_model_dir() / "config.json").is_file()
