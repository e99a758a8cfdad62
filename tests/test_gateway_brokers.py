"""`llmos gateway --broker-address a,b`: one gateway in front of two brokers that share the
kernel (llmos_bench.stack.SimStack with two shards, a simulated worker behind each).
New requests take turns between the brokers; once one broker dies, the gateway sends
every new request to the other and stays ready. Then the routing rules alone."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from gateway.brokers import READY_TTL_S, BrokerLink, Brokers, broker_addresses
from llmos.cli import cli
from llmos.processes import free_port
from llmos.wire import pb
from llmos_bench.stack import SIM_MODEL, SimStack
from workers.sim import LatencyProfile

pytest.importorskip("fastapi", reason="pip install 'llmos[gateway]'")

GATEWAY_READY_S = 60.0
TIMEOUT_S = 2  # the gateway's wait for a broker's answer: a dead broker costs a request this long
NUM_REQUESTS = 8


def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"content-type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def complete(url: str) -> tuple[int, dict[str, Any]]:
    return post(f"{url}/v1/completions", {"model": SIM_MODEL, "prompt": "hello", "max_tokens": 3})


def broker_samples(url: str, name: str) -> dict[str, float]:
    """One of the gateway's per-broker metrics, by broker address."""
    status, text = get(f"{url}/metrics")
    assert status == 200
    return {
        sample.labels["broker"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def admissions(log_dir: Path) -> dict[str, int]:
    """Requests each broker accepted, from its audit log."""
    names = ("audit.jsonl", "audit-1.jsonl")
    return {name: (log_dir / name).read_text().count('"kind":"admission"') for name in names}


class TwoBrokers:
    def __init__(self, stack: SimStack, url: str) -> None:
        self.stack = stack
        self.url = url


@pytest.fixture(scope="module")
def two_brokers(tmp_path_factory) -> Iterator[TwoBrokers]:
    log_dir = tmp_path_factory.mktemp("gateway-brokers")
    stack = SimStack(log_dir, 2, 4, LatencyProfile(), num_sim_processes=2, num_brokers=2)
    with stack:
        port = free_port()
        addresses = ",".join(stack.broker_addresses)
        stack.start_process(
            "gateway", "gateway", "--port", str(port), "--broker-address", addresses,
            "--timeout-s", str(TIMEOUT_S), "--insecure",
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        deadline_s = time.monotonic() + GATEWAY_READY_S
        while get_or_none(f"{url}/ready") != 200:
            stack.check_alive()
            assert time.monotonic() < deadline_s, f"the gateway is not ready\n{stack.log_tails()}"
            time.sleep(0.2)
        yield TwoBrokers(stack, url)


def get_or_none(url: str) -> int | None:
    try:
        return get(url)[0]
    except OSError:
        return None


@pytest.mark.e2e
def test_new_requests_take_turns_between_the_brokers(two_brokers: TwoBrokers) -> None:
    for _ in range(NUM_REQUESTS):
        status, body = complete(two_brokers.url)
        assert status == 200, body
        assert body["choices"][0]["finish_reason"] == "length"

    counts = admissions(two_brokers.stack.log_dir)
    assert sum(counts.values()) == NUM_REQUESTS
    assert min(counts.values()) >= 1, counts  # both served: they take turns while both are ready
    first, second = two_brokers.stack.broker_addresses
    sent = broker_samples(two_brokers.url, "llmos:gateway_broker_requests_total")
    assert sent == {first: counts["audit.jsonl"], second: counts["audit-1.jsonl"]}
    assert broker_samples(two_brokers.url, "llmos:gateway_broker_ready") == {first: 1, second: 1}
    status, text = get(f"{two_brokers.url}/v1/models")
    assert status == 200 and [model["id"] for model in json.loads(text)["data"]] == [SIM_MODEL]


@pytest.mark.e2e
def test_a_dead_broker_is_skipped_and_the_gateway_stays_ready(two_brokers: TwoBrokers) -> None:
    stack = two_brokers.stack
    stack.processes["broker-1"].kill()
    stack.processes["broker-1"].wait()
    before = admissions(stack.log_dir)["audit.jsonl"]

    # at most a request or two times out on the dead broker (503), until it is seen silent
    statuses = [complete(two_brokers.url)[0] for _ in range(3)]
    assert set(statuses) <= {200, 503}, statuses
    for _ in range(NUM_REQUESTS):
        status, body = complete(two_brokers.url)
        assert status == 200, body

    assert admissions(stack.log_dir)["audit.jsonl"] >= before + NUM_REQUESTS
    assert get(f"{two_brokers.url}/ready") == (200, "ready\n")
    first, second = stack.broker_addresses
    assert broker_samples(two_brokers.url, "llmos:gateway_broker_ready") == {first: 1, second: 0}
    status, text = get(f"{two_brokers.url}/v1/models")
    assert status == 200 and [model["id"] for model in json.loads(text)["data"]] == [SIM_MODEL]


# ---------------------------------------------------------------- the rules alone


def links(*readiness: bool) -> list[BrokerLink]:
    """Links whose last check (just now) found each broker ready or not; no client is
    asked, as the checks are fresh."""
    now_s = time.monotonic()
    return [
        BrokerLink(f"tcp://b{index}", cast(Any, None), is_ready=ready, checked_at_s=now_s)
        for index, ready in enumerate(readiness)
    ]


def test_picks_take_turns_among_the_ready_brokers() -> None:
    brokers = Brokers(links(True, False, True))
    picked = [brokers.pick().address for _ in range(4)]
    assert picked == ["tcp://b0", "tcp://b2", "tcp://b0", "tcp://b2"]


def test_with_no_broker_ready_picks_take_turns_among_all() -> None:
    brokers = Brokers(links(False, False))
    assert {brokers.pick().address for _ in range(2)} == {"tcp://b0", "tcp://b1"}


def test_a_named_model_goes_to_the_brokers_whose_workers_serve_it() -> None:
    brokers = Brokers(links(True, True, True))
    for link, models in zip(brokers.links, [{"a"}, {"b"}, {"a", "b"}], strict=True):
        link.models = frozenset(models)
    assert {brokers.pick("b").address for _ in range(4)} == {"tcp://b1", "tcp://b2"}
    assert {brokers.pick("").address for _ in range(3)} == {"tcp://b0", "tcp://b1", "tcp://b2"}
    # a model none was seen serving: every ready broker in turn (one answers UNKNOWN_MODEL)
    assert {brokers.pick("c").address for _ in range(3)} == {"tcp://b0", "tcp://b1", "tcp://b2"}
    brokers.links[2].note_silence()
    assert {brokers.pick("b").address for _ in range(2)} == {"tcp://b1"}


def test_a_silent_broker_is_skipped_until_its_next_check() -> None:
    brokers = Brokers(links(True, True))
    brokers.links[1].note_silence()
    assert {brokers.pick().address for _ in range(4)} == {"tcp://b0"}
    assert not brokers.links[1].is_stale
    brokers.links[1].checked_at_s -= READY_TTL_S
    assert brokers.links[1].is_stale


def test_stale_checks_are_renewed_in_the_background_without_holding_the_pick() -> None:
    class Silent:
        async def status(self) -> None:
            await asyncio.sleep(3600)

    async def pick_twice() -> tuple[str, str, bool]:
        brokers = Brokers([BrokerLink(f"tcp://b{index}", cast(Any, Silent())) for index in range(2)])
        first, second = brokers.pick(), brokers.pick()
        assert brokers.renewal is not None
        is_pending = not brokers.renewal.done()
        brokers.close()
        return first.address, second.address, is_pending

    first, second, is_pending = asyncio.run(pick_twice())
    assert {first, second} == {"tcp://b0", "tcp://b1"} and is_pending


def test_a_check_notes_readiness_and_the_models_served() -> None:
    class Answering:
        def __init__(self, *workers: list[str]) -> None:
            self.reply = pb.StatusReply(workers=[pb.WorkerStatus(models=models) for models in workers])

        async def status(self) -> pb.StatusReply:
            return self.reply

    async def check(client: Any) -> tuple[bool, frozenset[str]]:
        link = BrokerLink("tcp://b", client)
        return await link.check(), link.models

    assert asyncio.run(check(Answering(["a"], ["a", "b"]))) == (True, frozenset({"a", "b"}))
    assert asyncio.run(check(Answering())) == (False, frozenset())


def test_broker_addresses_are_split_on_commas_once_each() -> None:
    assert broker_addresses(" tcp://a:1, tcp://b:2,tcp://a:1 ,") == ["tcp://a:1", "tcp://b:2"]
    with pytest.raises(ValueError, match="names no broker"):
        broker_addresses(" , ")


def test_an_empty_broker_address_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["gateway", "--broker-address", ","])
    assert result.exit_code == 2
    assert "names no broker" in result.output
