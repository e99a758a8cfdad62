"""Client.embed / Client.classify (sync and asyncio) and `llmos embed` / `llmos classify`,
against a fake broker on a real ROUTER socket.

The first input steers the fake: "bad" -> Error INVALID_ARGUMENT; "silent" ->
nothing; "fail" -> Accepted, then Error WORKER_FAILED; anything else ->
Accepted, then the result: per input the embedding [len(text), index], or the
label "positive" when the text holds "good" (else "negative").
"""

from __future__ import annotations

import asyncio
import json

import pytest
import zmq
from click.testing import CliRunner
from fake_broker import FakeBroker, send
from google.protobuf.message import Message

from llmos.aio import AsyncClient
from llmos.cli import cli
from llmos.client import Client
from llmos.errors import InvalidArgument, LlmosTimeout, WorkerFailed
from llmos.wire import pack, pb, unpack
from llmos.wire.sockets import router_frames

POOLING_ACCEPTS = frozenset({"embed", "classify", "cancel"})
SHORT_TIMEOUT_S = 0.3


def classification(text: str) -> pb.Classification:
    positive = 0.9 if "good" in text else 0.2
    return pb.Classification(
        label="positive" if positive > 0.5 else "negative",
        score=max(positive, 1 - positive),
        scores=[
            pb.LabelScore(label="negative", score=1 - positive),
            pb.LabelScore(label="positive", score=positive),
        ],
    )


def script(name: str, request: pb.EmbedRequest | pb.ClassifyRequest) -> list[Message]:
    rid = request.request_id
    first = request.inputs[0] if request.inputs else ""
    if first == "bad":
        return [pb.Error(code=pb.INVALID_ARGUMENT, message="inputs must not be bad", request_id=rid)]
    if first == "silent":
        return []
    accepted = pb.Accepted(request_id=rid, tier="interactive")
    if first == "fail":
        return [accepted, pb.Error(code=pb.WORKER_FAILED, message="model exploded", request_id=rid)]
    usage = pb.Usage(prompt_tokens=sum(len(text) for text in request.inputs))
    if name == "embed":
        return [
            accepted,
            pb.EmbedResult(
                request_id=rid,
                model="fake-embedder",
                worker_id="worker-0",
                usage=usage,
                embeddings=[pb.Embedding(values=[len(text), i]) for i, text in enumerate(request.inputs)],
            ),
        ]
    return [
        accepted,
        pb.ClassifyResult(
            request_id=rid,
            model="fake-classifier",
            worker_id="worker-0",
            usage=usage,
            classifications=[classification(text) for text in request.inputs],
        ),
    ]


class PoolingFakeBroker(FakeBroker):
    def _answer(self, socket: zmq.Socket, frames: list[bytes], held: list) -> None:
        identity, payload, _ = router_frames(frames)
        name, message = unpack(payload, POOLING_ACCEPTS)
        self.received.append((name, message))
        if name != "cancel":
            for reply in script(name, message):
                send(socket, identity, pack(reply))


@pytest.fixture
def broker():
    with PoolingFakeBroker() as fake:
        yield fake


def test_embed_waits_past_accepted_for_the_embed_result(broker):
    with Client(broker.address, timeout_s=10) as client:
        result = client.embed(
            ["one", "three"], model="m", tier="batch", tenant="t", request_id="e1", deadline_ms=500
        )

    assert [list(e.values) for e in result.embeddings] == [[3, 0], [5, 1]]
    assert (result.request_id, result.model, result.usage.prompt_tokens) == ("e1", "fake-embedder", 8)
    name, sent = broker.received[0]
    assert name == "embed" and list(sent.inputs) == ["one", "three"]
    assert (sent.request_id, sent.model, sent.tier, sent.tenant, sent.deadline_ms) == (
        "e1",
        "m",
        "batch",
        "t",
        500,
    )


def test_one_string_is_one_input(broker):
    with Client(broker.address, timeout_s=10) as client:
        result = client.classify("a good day")

    assert [(c.label, c.score) for c in result.classifications] == [("positive", pytest.approx(0.9))]
    assert broker.received[0][0] == "classify" and list(broker.received[0][1].inputs) == ["a good day"]


def test_errors_before_and_after_accepted_raise_their_typed_exceptions(broker):
    with Client(broker.address, timeout_s=10) as client:
        with pytest.raises(InvalidArgument, match="must not be bad"):
            client.embed(["bad"])
        with pytest.raises(WorkerFailed):
            client.classify(["fail"])
        assert client.embed(["fine"]).embeddings[0].values == [4, 0]  # the client still works


def test_timeout_when_the_broker_stays_silent(broker):
    with Client(broker.address, timeout_s=SHORT_TIMEOUT_S) as client:
        with pytest.raises(LlmosTimeout):
            client.embed(["silent"])


def test_async_client_embeds_and_classifies_concurrently(broker):
    async def main():
        async with AsyncClient(broker.address, timeout_s=10) as client:
            embedded, classified = await asyncio.gather(
                client.embed(["ab", "c"]), client.classify(["good", "meh"])
            )
            with pytest.raises(InvalidArgument):
                await client.classify(["bad"])
            return embedded, classified

    embedded, classified = asyncio.run(main())
    assert [list(e.values) for e in embedded.embeddings] == [[2, 0], [1, 1]]
    assert [c.label for c in classified.classifications] == ["positive", "negative"]


# ---------------------------------------------------------------- the CLI


def invoke(*args: str, stdin: str | None = None):
    return CliRunner().invoke(cli, list(args), input=stdin, catch_exceptions=False)


def test_cli_embed_prints_dimensions_and_first_values_or_json(broker):
    plain = invoke("embed", "--broker-address", broker.address, "one", "three")
    as_json = invoke("embed", "--broker-address", broker.address, "--json", "one")

    assert plain.exit_code == 0
    assert plain.stdout.splitlines() == ["2 dims  [3.0000, 0.0000]  one", "2 dims  [5.0000, 1.0000]  three"]
    assert "usage: prompt_tokens=8" in plain.stderr and "model=fake-embedder" in plain.stderr
    assert json.loads(as_json.stdout)["embeddings"] == [{"values": [3.0, 0.0]}]


def test_cli_classify_prints_the_top_label_per_input_and_reads_stdin(broker):
    result = invoke("classify", "--broker-address", broker.address, "-", stdin="a good one\n\nmeh\n")

    assert result.exit_code == 0
    assert result.stdout.splitlines() == ["positive  0.9000  a good one", "negative  0.8000  meh"]
    assert list(broker.received[0][1].inputs) == ["a good one", "meh"]


def test_cli_exits_2_on_a_refused_request_and_4_on_a_timeout(broker):
    refused = invoke("embed", "--broker-address", broker.address, "bad")
    silent = invoke("classify", "--broker-address", broker.address, "--timeout-s", "0.3", "silent")

    assert refused.exit_code == 2 and "error: INVALID_ARGUMENT: inputs must not be bad" in refused.stderr
    assert silent.exit_code == 4 and "error: " in silent.stderr
