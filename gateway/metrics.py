"""The gateway's Prometheus metrics, served on its own HTTP port at /metrics.

An ASGI middleware counts every HTTP request by route and status and times it
until its last body byte is sent, so a stream counts until its `[DONE]`. The
route is the matched route's path (`/v1/completions`), or `other` for paths no
route matched: the label set stays bounded whatever clients ask for. Each broker
(by its address, from the gateway's own flags) has its readiness at the last check
and the new requests sent to it, read at scrape time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker.metrics import REQUEST_BUCKETS_S
from gateway.brokers import Brokers

UNMATCHED_ROUTE = "other"
# fast answers (errors, /v1/models) and whole generations
DURATION_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, *REQUEST_BUCKETS_S)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "llmos:gateway_requests", "HTTP requests answered", ("route", "status"), registry=self.registry
        )
        self.duration_s = Histogram(
            "llmos:gateway_request_duration_seconds",
            "HTTP request to its last body byte",
            ("route",),
            buckets=DURATION_BUCKETS_S,
            registry=self.registry,
        )

    def watch_brokers(self, brokers: Callable[[], Brokers | None]) -> None:
        self.registry.register(BrokersCollector(brokers))

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class BrokersCollector(Collector):
    """Each broker's readiness and the new requests sent to it, read at scrape time."""

    def __init__(self, brokers: Callable[[], Brokers | None]) -> None:
        self.brokers = brokers  # None until the lifespan opens the clients

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        brokers = self.brokers()
        if brokers is None:
            return
        ready = GaugeMetricFamily(
            "llmos:gateway_broker_ready", "1 if the broker held a worker at its last check", labels=["broker"]
        )
        sent = CounterMetricFamily(
            "llmos:gateway_broker_requests", "new requests the gateway sent to the broker", labels=["broker"]
        )
        for link in list(brokers.links):
            ready.add_metric([link.address], int(link.is_ready))
            sent.add_metric([link.address], link.num_requests)
        yield ready
        yield sent


class MetricsMiddleware:
    """Counts and times every HTTP request the app answers."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start_s = time.perf_counter()
        status = 500  # unless the app starts a response

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = route_of(scope)
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.duration_s.labels(route).observe(time.perf_counter() - start_s)


def route_of(scope: Scope) -> str:
    """The matched route's path template (Starlette's router leaves it in the scope)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE
