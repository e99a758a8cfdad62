"""The metrics server on its own: its three paths, and a failing collector or
readiness check answered 500 without reaching the service."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from llmos.observability import MetricsServer, Readiness, start_metrics
from llmos.processes import free_port
from llmos.service_metrics import registry_of


class OneGauge(Collector):
    def __init__(self) -> None:
        self.is_broken = False

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.is_broken:
            raise RuntimeError("a bug in a collector")
        yield GaugeMetricFamily("llmos:test_gauge", "a gauge", value=7)


class Answers:
    def __init__(self) -> None:
        self.is_ready, self.is_broken = False, False

    def readiness(self) -> tuple[bool, str]:
        if self.is_broken:
            raise ValueError("a bug in a readiness check")
        return self.is_ready, "no worker is registered yet"


def get(server: MetricsServer, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.fixture
def served() -> Iterator[tuple[MetricsServer, OneGauge, Answers]]:
    collector, answers = OneGauge(), Answers()
    readiness: Readiness = answers.readiness
    server = start_metrics("127.0.0.1", free_port(), registry_of(collector), readiness)
    assert server is not None
    try:
        yield server, collector, answers
    finally:
        server.stop()


def test_port_zero_serves_nothing():
    assert start_metrics("127.0.0.1", 0, OneGauge(), lambda: (True, "")) is None


def test_metrics_health_and_ready(served):
    server, _, answers = served
    status, text = get(server, "/metrics")
    assert status == 200
    assert "llmos:test_gauge 7.0" in text.splitlines()
    assert get(server, "/health") == (200, "ok\n")
    assert get(server, "/ready") == (503, "no worker is registered yet\n")
    answers.is_ready = True
    assert get(server, "/ready") == (200, "ready\n")
    assert get(server, "/nope") == (404, "/metrics, /health or /ready\n")


def test_only_the_services_own_registry_is_served(served):
    server, _, _ = served
    global_counter = Counter("llmos_test_global_only", "in the default registry", registry=REGISTRY)
    try:
        assert "llmos_test_global_only" not in get(server, "/metrics")[1]
    finally:
        REGISTRY.unregister(global_counter)


def test_a_failing_collector_or_readiness_check_is_a_500_and_the_server_goes_on(served):
    server, collector, answers = served
    collector.is_broken, answers.is_broken = True, True
    assert get(server, "/metrics") == (500, "error; logged\n")
    assert get(server, "/ready") == (500, "error; logged\n")
    assert server.num_errors_unlogged == 1  # the second traceback waits for the next interval
    collector.is_broken = False
    assert get(server, "/metrics")[0] == 200
    assert get(server, "/health") == (200, "ok\n")
