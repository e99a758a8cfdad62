"""The client SDKs (sync and asyncio) against a fake broker on a real ROUTER socket."""

from __future__ import annotations

import asyncio

import pytest
from fake_broker import INVALID_SENTENCE, QUEUE_FULL_SENTENCE, FakeBroker, token_id

from llmos.aio import AsyncClient
from llmos.client import Client
from llmos.errors import (
    InvalidArgument,
    LlmosError,
    LlmosTimeout,
    QueueFull,
    WorkerFailed,
    error_from_proto,
)
from llmos.wire import pb

SHORT_TIMEOUT_S = 0.3


@pytest.fixture
def broker():
    with FakeBroker() as fake:
        yield fake


def test_submit_and_stream_yield_chunks_in_order_then_the_result(broker):
    with Client(broker.address, timeout_s=10) as client:
        request_id = client.submit(
            "the quick brown fox", max_tokens=4, top_p=0.9, seed=7, stop=["\n"], tier="batch"
        )
        chunks = list(client.stream(request_id))
        result = client.result(request_id)

    assert [chunk.text for chunk in chunks] == ["the ", "quick ", "brown ", "fox"]
    assert [chunk.index for chunk in chunks] == [0, 1, 2, 3]
    assert result.text == "the quick brown fox"
    assert list(result.token_ids) == [token_id(i) for i in range(4)]
    assert result.usage.generated_tokens == 4
    name, sent = broker.received[0]
    assert name == "generate" and sent.request_id == request_id
    assert sent.sampling.max_tokens == 4 and sent.sampling.seed == 7
    assert sent.sampling.HasField("top_p") and list(sent.sampling.stop) == ["\n"]
    assert sent.tier == "batch"


def test_generate_returns_the_result(broker):
    with Client(broker.address, timeout_s=10) as client:
        result = client.generate("hello world", request_id="r-1")
    assert (result.request_id, result.text, result.finish_reason) == (
        "r-1",
        "hello world",
        pb.FINISH_REASON_LENGTH,
    )


def test_an_error_reply_raises_its_typed_exception(broker):
    with Client(broker.address, timeout_s=10) as client:
        with pytest.raises(QueueFull) as caught:
            client.submit("full", request_id="r-full")
        with pytest.raises(InvalidArgument) as invalid:
            client.submit("bad")
    assert caught.value.code == pb.QUEUE_FULL
    assert caught.value.code_name == "QUEUE_FULL"
    assert caught.value.retry_after_ms == 250
    assert caught.value.request_id == "r-full"
    assert caught.value.message == QUEUE_FULL_SENTENCE
    assert invalid.value.is_client_error and not caught.value.is_client_error
    assert invalid.value.message == INVALID_SENTENCE


def test_an_error_midway_ends_the_stream_with_its_exception(broker):
    with Client(broker.address, timeout_s=10) as client:
        request_id = client.submit("fail-midway")
        seen = []
        with pytest.raises(WorkerFailed):
            for chunk in client.stream(request_id):
                seen.append(chunk.text)
    assert seen == ["x"]


def test_timeout_when_the_broker_stays_silent(broker):
    with Client(broker.address, timeout_s=SHORT_TIMEOUT_S) as client:
        with pytest.raises(LlmosTimeout) as on_submit:
            client.submit("silent", request_id="r-silent")
        request_id = client.submit("accept-only")
        with pytest.raises(LlmosTimeout):
            list(client.stream(request_id))
    assert on_submit.value.code_name == "TIMEOUT"
    assert on_submit.value.request_id == "r-silent"


def test_two_interleaved_requests_on_one_client_are_demultiplexed():
    with FakeBroker(hold_until=2) as broker, Client(broker.address, timeout_s=10) as client:
        first = client.submit("one two three")
        second = client.submit("alpha beta")
        first_texts = [chunk.text for chunk in client.stream(first)]
        second_texts = [chunk.text for chunk in client.stream(second)]
        results = client.result(second), client.result(first)
    assert first_texts == ["one ", "two ", "three"]
    assert second_texts == ["alpha ", "beta"]
    assert [result.text for result in results] == ["alpha beta", "one two three"]


def test_status_returns_the_broker_reply(broker):
    with Client(broker.address, timeout_s=10) as client:
        status = client.status()
    assert [worker.worker_id for worker in status.workers] == ["worker-0"]
    assert status.scheduler_policy == "priority"


def test_error_from_proto_picks_the_subclass_for_every_code():
    for name, code in pb.ErrorCode.items():
        error = error_from_proto(pb.Error(code=code, message="m", request_id="r"))
        assert isinstance(error, LlmosError)
        assert (error.code, error.code_name, error.request_id) == (code, name, "r")
        assert (type(error) is LlmosError) == (code == pb.ERROR_CODE_UNSPECIFIED)


# ---------------------------------------------------------------- asyncio


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


def test_async_client_streams_chunks_and_the_result(broker):
    async def scenario():
        async with AsyncClient(broker.address, timeout_s=10) as client:
            request_id = await client.submit("the quick brown fox")
            texts = [chunk.text async for chunk in client.stream(request_id)]
            return texts, await client.result(request_id)

    texts, result = run(scenario())
    assert texts == ["the ", "quick ", "brown ", "fox"]
    assert result.text == "the quick brown fox"


def test_async_client_raises_typed_errors_and_timeouts(broker):
    async def scenario():
        async with AsyncClient(broker.address, timeout_s=SHORT_TIMEOUT_S) as client:
            with pytest.raises(QueueFull) as caught:
                await client.submit("full")
            with pytest.raises(LlmosTimeout):
                await client.submit("silent")
            return caught.value

    error = run(scenario())
    assert error.retry_after_ms == 250


def test_async_client_demultiplexes_concurrent_requests():
    async def scenario(address):
        async with AsyncClient(address, timeout_s=10) as client:
            first, second = await asyncio.gather(
                client.generate("one two three"), client.generate("alpha beta")
            )
            return first.text, second.text, (await client.status()).num_completed

    with FakeBroker(hold_until=2) as broker:
        assert run(scenario(broker.address)) == ("one two three", "alpha beta", 7)
