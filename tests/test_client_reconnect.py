"""Clients ride through a broker restart: the broker is SIGKILLed mid-stream and started
again with the same command line on the same ports; the sync client, the asyncio client
and `llmos submit` each get every answer whole, with no token twice. A broker that stops
answering is noticed by the heartbeats; one that never comes back ends in LlmosTimeout.

Simulated workers answer deterministically and slowly enough (one token per
STEP_MS) that the broker dies with every stream part way through.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import threading
from collections.abc import Iterator

import pytest
from fake_broker import FakeBroker
from stack import Stack

from llmos.aio import AsyncClient
from llmos.client import Client
from llmos.errors import LlmosTimeout
from llmos.processes import llmos_command
from llmos.wire import pb
from workers.sim import SIM_TOKEN_TEXT, LatencyProfile

STEP_MS = 25.0  # one simulated engine step, whatever its batch
NUM_TOKENS = 80  # each answer: about 2 s of steps
NUM_REQUESTS = 3
TOKENS_BEFORE_KILL = 8
TIMEOUT_S = 60.0
SHORT_TIMEOUT_S = 2.0  # for a broker that never comes back
LOST_MARK = "lost the broker"  # the client's log line when it resends
CLIENT_LOGGER = "llmos.reconnect"
PROMPTS = [f"request {index} once upon a time" for index in range(NUM_REQUESTS)]


@pytest.fixture
def stack(tmp_path) -> Iterator[Stack]:
    """Kernel, scheduler, broker and two simulated workers that take STEP_MS a step."""
    profile_path = tmp_path / "profile.json"
    LatencyProfile(
        base_ms=STEP_MS, per_seq_ms=0.0, per_prefill_token_ms=0.0, per_context_token_us=0.0, source="test"
    ).save(str(profile_path))
    with Stack(model_dir=tmp_path, log_dir=tmp_path, num_workers=0) as stack:
        stack.start_process(
            "sim",
            "worker",
            "--engine",
            "sim",
            "--sim-workers",
            "2",
            "--worker-id",
            "sim",
            "--model-name",
            "simulated",
            "--profile",
            str(profile_path),
            *stack.worker_links(),
        )
        stack.wait_ready(num_workers=2)
        yield stack


def restart_broker(stack: Stack) -> None:
    """SIGKILL the broker, then start it with the same command line on the same ports."""
    stack.kill("broker")
    (stack.log_dir / "broker.log").rename(stack.log_dir / "broker-killed.log")
    stack.start_broker(*stack.broker_args)


def token_ids_of(chunks: list[pb.TokenChunk]) -> list[int]:
    return [token_id for chunk in chunks for token_id in chunk.token_ids]


def assert_whole_once(chunks: list[pb.TokenChunk], result: pb.GenerateResult, expected: list[int]) -> None:
    """The chunks hold the expected answer, each token once, in order; the result agrees."""
    starts = [sum(len(chunk.token_ids) for chunk in chunks[:position]) for position in range(len(chunks))]
    assert [chunk.index for chunk in chunks] == starts
    assert token_ids_of(chunks) == expected
    assert list(result.token_ids) == expected
    assert "".join(chunk.text for chunk in chunks) == result.text == SIM_TOKEN_TEXT * NUM_TOKENS
    assert result.finish_reason == pb.FINISH_REASON_LENGTH


def assert_resent(caplog: pytest.LogCaptureFixture, request_ids: list[str]) -> None:
    """The client logged one reconnect that resent every request (none had ended)."""
    resends = [record.getMessage() for record in caplog.records if LOST_MARK in record.getMessage()]
    assert len(resends) == 1, resends
    assert resends[0].endswith(" ".join(sorted(request_ids)))


@pytest.mark.e2e
def test_a_client_streams_every_answer_whole_through_a_broker_restart(stack, caplog):
    caplog.set_level(logging.WARNING, logger=CLIENT_LOGGER)
    with Client(stack.broker_address, timeout_s=TIMEOUT_S) as client:
        expected = [list(client.generate(prompt, max_tokens=NUM_TOKENS).token_ids) for prompt in PROMPTS]
        request_ids = [client.submit(prompt, max_tokens=NUM_TOKENS) for prompt in PROMPTS]
        streams = [client.stream(request_id) for request_id in request_ids]
        chunks: list[list[pb.TokenChunk]] = [[] for _ in request_ids]
        for chunk in streams[0]:
            chunks[0].append(chunk)
            if len(token_ids_of(chunks[0])) >= TOKENS_BEFORE_KILL:
                break
        restart_broker(stack)
        for position, stream in enumerate(streams):
            chunks[position].extend(stream)
        results = [client.result(request_id) for request_id in request_ids]
    assert expected == [[expected[0][0]] * NUM_TOKENS] * NUM_REQUESTS
    for position in range(NUM_REQUESTS):
        assert_whole_once(chunks[position], results[position], expected[position])
    assert_resent(caplog, request_ids)


@pytest.mark.e2e
def test_an_asyncio_client_streams_every_answer_whole_through_a_broker_restart(stack, caplog):
    caplog.set_level(logging.WARNING, logger=CLIENT_LOGGER)

    async def run() -> tuple[list[list[int]], list[str], list[list[pb.TokenChunk]], list[pb.GenerateResult]]:
        async with AsyncClient(stack.broker_address, timeout_s=TIMEOUT_S) as client:
            answers = await asyncio.gather(
                *(client.generate(prompt, max_tokens=NUM_TOKENS) for prompt in PROMPTS)
            )
            request_ids = [await client.submit(prompt, max_tokens=NUM_TOKENS) for prompt in PROMPTS]
            chunks: list[list[pb.TokenChunk]] = [[] for _ in request_ids]

            async def read(position: int, num_tokens: int | None = None) -> None:
                """Stream `position`'s chunks until it holds `num_tokens` (None: to its end)."""
                async for chunk in streams[position]:
                    chunks[position].append(chunk)
                    if num_tokens is not None and len(token_ids_of(chunks[position])) >= num_tokens:
                        return

            streams = [client.stream(request_id) for request_id in request_ids]
            await read(0, TOKENS_BEFORE_KILL)
            restart_broker(stack)
            await asyncio.gather(*(read(position) for position in range(NUM_REQUESTS)))
            results = [await client.result(request_id) for request_id in request_ids]
        return [list(answer.token_ids) for answer in answers], request_ids, chunks, results

    expected, request_ids, chunks, results = asyncio.run(run())
    for position in range(NUM_REQUESTS):
        assert_whole_once(chunks[position], results[position], expected[position])
    assert_resent(caplog, request_ids)


@pytest.mark.e2e
def test_llmos_submit_prints_the_whole_answer_through_a_broker_restart(stack, tmp_path):
    stderr_path = tmp_path / "submit.stderr"
    with open(stderr_path, "wb") as stderr:
        submit = subprocess.Popen(
            llmos_command(
                "submit",
                "--broker-address",
                stack.broker_address,
                "--max-tokens",
                str(NUM_TOKENS),
                "--timeout-s",
                str(TIMEOUT_S),
                PROMPTS[0],
            ),
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        try:
            assert submit.stdout is not None
            before_kill = submit.stdout.read(len(SIM_TOKEN_TEXT) * TOKENS_BEFORE_KILL).decode()
            restart_broker(stack)
            after_kill = submit.stdout.read().decode()
            assert submit.wait(timeout=TIMEOUT_S) == 0
        finally:
            if submit.poll() is None:
                submit.kill()
                submit.wait()
    assert before_kill + after_kill == SIM_TOKEN_TEXT * NUM_TOKENS + "\n"
    lines = stderr_path.read_text().splitlines()
    resends = [line for line in lines if LOST_MARK in line]
    assert len(resends) == 1, lines
    assert resends[0].startswith(
        f"llmos: lost the broker at {stack.broker_address}; resending 1 live requests on a new connection: "
    )
    assert any(line.startswith("usage: ") and f"generated_tokens={NUM_TOKENS}" in line for line in lines)


class LostBrokerLog(logging.Handler):
    """Sets `event` when the client logs that it lost the broker."""

    def __init__(self) -> None:
        super().__init__()
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if LOST_MARK in record.getMessage():
            self.event.set()


@pytest.mark.e2e
def test_a_broker_that_stops_answering_is_noticed_by_heartbeats(stack, caplog):
    """SIGSTOP keeps the broker's connections open but silent: the ZMTP heartbeats end
    the connection, and the client resends; once the broker runs again the answer
    arrives whole."""
    caplog.set_level(logging.WARNING, logger=CLIENT_LOGGER)
    lost = LostBrokerLog()
    logging.getLogger(CLIENT_LOGGER).addHandler(lost)
    broker = stack.processes["broker"]

    def continue_broker_once_lost() -> None:
        lost.event.wait(TIMEOUT_S)
        broker.send_signal(signal.SIGCONT)

    resume = threading.Thread(target=continue_broker_once_lost)
    try:
        with Client(stack.broker_address, timeout_s=TIMEOUT_S) as client:
            request_id = client.submit(PROMPTS[0], max_tokens=NUM_TOKENS)
            stream = client.stream(request_id)
            chunks = [next(stream)]
            broker.send_signal(signal.SIGSTOP)
            resume.start()
            chunks.extend(stream)
            result = client.result(request_id)
    finally:
        lost.event.set()
        if resume.is_alive():
            resume.join()
        broker.send_signal(signal.SIGCONT)
        logging.getLogger(CLIENT_LOGGER).removeHandler(lost)
    assert_whole_once(chunks, result, [result.token_ids[0]] * NUM_TOKENS)
    assert_resent(caplog, [request_id])


def test_a_broker_that_never_comes_back_ends_in_the_timeout(caplog):
    caplog.set_level(logging.WARNING, logger=CLIENT_LOGGER)
    with FakeBroker() as broker:
        client = Client(broker.address, timeout_s=SHORT_TIMEOUT_S)
        request_id = client.submit("accept-only")
    try:  # the broker is gone for good
        with pytest.raises(LlmosTimeout) as raised:
            client.result(request_id)
    finally:
        client.close()
    assert raised.value.request_id == request_id
    assert_resent(caplog, [request_id])
