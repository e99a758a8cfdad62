"""The broker's Prometheus metrics.

Events (a request finished, preempted, re-queued; a batch decided locally; a
loop turn) update `BrokerMetrics`' counters and histograms from the broker's own
thread. Levels (queue depths, running requests, workers) and the counts the
fronts keep are read by `BrokerCollector` at scrape time, from the HTTP thread.
Tiers, codes, finish reasons and refusal kinds are bounded by the config and
the code, and models by what registered workers serve (admission refuses the
rest). Tenants are not bounded, so `TenantLabels` gives the first
`--metrics-max-tenants` tenants a label of their own and counts the rest as
`other`: a flood of made-up tenant names cannot grow the broker's memory or a
Prometheus server's series.
"""

from __future__ import annotations

from collections import Counter as CountByKey
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from broker.requests import Request
from llmos.service_metrics import read_while_changing
from llmos.wire import pb

if TYPE_CHECKING:
    from broker.service import Broker

# vLLM's buckets, so its dashboards read these as they read its own
TTFT_BUCKETS_S = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS_S = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
REQUEST_BUCKETS_S = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0)
OTHER_TENANTS = "other"
LOOP_BUCKETS_S = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


def finish_reason_name(finish_reason: int) -> str:
    """`FINISH_REASON_STOP` -> `stop`."""
    return pb.FinishReason.Name(finish_reason).removeprefix("FINISH_REASON_").lower()


class TenantLabels:
    """A tenant's label in metrics: its name for the first `limit` tenants seen, then `other`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.named: set[str] = set()

    def of(self, tenant: str) -> str:
        if tenant in self.named:
            return tenant
        if len(self.named) < self.limit:
            self.named.add(tenant)
            return tenant
        return OTHER_TENANTS


class Children:
    """`metric.labels(*values)`, looked up once per label set: prometheus_client takes a
    lock and builds a key on every call, and the broker calls some per token delta.
    The label sets are bounded (see the module's docstring), so is this cache."""

    def __init__(self, metric: Counter | Histogram) -> None:
        self.metric = metric
        self.children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = self.metric.labels(*values)
        return child


class BrokerMetrics:
    """The metric objects the broker's parts update, on a registry of its own."""

    def __init__(self, max_tenants: int = 32) -> None:
        self.registry = CollectorRegistry()  # the broker's own, never the global default
        self.tenants = TenantLabels(max_tenants)
        tier = ["tier", "model"]

        def histogram(name: str, doc: str, buckets: tuple[float, ...], labels: list[str]) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=self.registry)

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, registry=self.registry)

        self.time_to_first_token_s = histogram(
            "llmos:time_to_first_token_seconds", "acceptance to first token", TTFT_BUCKETS_S, tier
        )
        self.time_per_output_token_s = histogram(
            "llmos:time_per_output_token_seconds", "first token to last, per token after the first",
            TPOT_BUCKETS_S, tier,
        )  # fmt: skip
        self.e2e_request_latency_s = histogram(
            "llmos:e2e_request_latency_seconds", "acceptance to final answer", REQUEST_BUCKETS_S, tier
        )
        self.request_queue_time_s = histogram(
            "llmos:request_queue_time_seconds", "acceptance to first dispatch", REQUEST_BUCKETS_S, tier
        )
        self.broker_loop_lag_s = histogram(
            "llmos:broker_loop_lag_seconds", "time one loop turn takes after its poll", LOOP_BUCKETS_S, []
        )
        self.requests_admitted = counter(
            "llmos:requests_admitted", "requests accepted", ("tier", "tenant", "model")
        )
        self.request_success = counter(
            "llmos:request_success",
            "requests their worker finished, by finish reason",
            ("finish_reason", "tenant", "model"),
        )
        self.prompt_tokens = counter(
            "llmos:prompt_tokens", "prompt tokens of finished requests", ("tenant", "model")
        )
        self.generation_tokens = counter(
            "llmos:generation_tokens", "tokens relayed to clients", ("tenant", "model")
        )
        self.num_preemptions = counter("llmos:num_preemptions", "requests a worker preempted")
        self.requests_requeued = counter(
            "llmos:requests_requeued", "requests re-queued after their worker was lost"
        )
        self.scheduler_fallbacks = counter(
            "llmos:scheduler_fallbacks", "batches the broker decided itself, the scheduler being down or slow"
        )
        self.direct_placements = counter(
            "llmos:direct_placements",
            "requests the broker placed without asking: alone in the queue, one idle worker for them",
        )
        self.admitted_of = Children(self.requests_admitted)
        self.success_of = Children(self.request_success)
        self.prompt_tokens_of = Children(self.prompt_tokens)
        self.generation_tokens_of = Children(self.generation_tokens)
        self.e2e_of = Children(self.e2e_request_latency_s)
        self.queue_time_of = Children(self.request_queue_time_s)
        self.ttft_of = Children(self.time_to_first_token_s)
        self.tpot_of = Children(self.time_per_output_token_s)

    def request_admitted(self, request: Request) -> None:
        self.admitted_of(request.tier, self.tenants.of(request.tenant), request.model).inc()

    def tokens_generated(self, tenant: str, model: str, num_tokens: int) -> None:
        self.generation_tokens_of(self.tenants.of(tenant), model).inc(num_tokens)

    def request_finished(self, request: Request, finish_reason: int, now_s: float) -> None:
        """Its worker finished the request and the client gets its answer now."""
        tier, tenant, model = request.tier, self.tenants.of(request.tenant), request.model
        self.success_of(finish_reason_name(finish_reason), tenant, model).inc()
        self.prompt_tokens_of(tenant, model).inc(request.prompt_tokens)
        self.e2e_of(tier, model).observe(now_s - request.accepted_at_s)
        if request.dispatched_at_s is not None:
            self.queue_time_of(tier, model).observe(request.dispatched_at_s - request.accepted_at_s)
        if request.first_token_at_s is not None:
            self.ttft_of(tier, model).observe(request.first_token_at_s - request.accepted_at_s)
            num_later_tokens = len(request.generated_token_ids) - 1
            if num_later_tokens > 0:
                self.tpot_of(tier, model).observe((now_s - request.first_token_at_s) / num_later_tokens)


def snapshot(counts: dict[str, int]) -> dict[str, int]:
    """A copy of a dict the broker's loop may be adding to meanwhile."""
    return read_while_changing(lambda: dict(counts), {})


class BrokerCollector(Collector):
    """Levels and the fronts' counts, read at scrape time."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def running_by_tier(self) -> CountByKey[str]:
        broker = self.broker
        counts: CountByKey[str] = CountByKey()
        for worker in list(broker.workers):
            for request_id in list(worker.running_ids):
                request = broker.requests.get(request_id)
                if request is not None:
                    counts[request.tier] += 1
        return counts

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        broker = self.broker
        front, queue = broker.client_front, broker.requests.queue
        waiting = GaugeMetricFamily("llmos:num_requests_waiting", "requests queued, by tier", labels=["tier"])
        running = GaugeMetricFamily(
            "llmos:num_requests_running", "requests on workers, by tier", labels=["tier"]
        )
        running_by_tier: CountByKey[str] = read_while_changing(self.running_by_tier, CountByKey())
        for tier in queue.tiers:
            waiting.add_metric([tier], queue.depth(tier))
            running.add_metric([tier], running_by_tier[tier])
        yield waiting
        yield running
        rejected = CounterMetricFamily(
            "llmos:requests_rejected", "requests and messages refused with an error, by code", labels=["code"]
        )
        for code, count in snapshot(front.num_rejected_by_code).items():
            rejected.add_metric([code], count)
        yield rejected
        yield CounterMetricFamily(
            "llmos:requests_completed",
            "requests given their final message",
            value=broker.replies.num_completed,
        )
        workers = GaugeMetricFamily("llmos:workers", "registered workers", labels=["state"])
        draining = read_while_changing(lambda: sum(1 for worker in broker.workers if worker.is_draining), 0)
        workers.add_metric(["live"], len(broker.workers) - draining)
        workers.add_metric(["draining"], draining)
        yield workers
        yield GaugeMetricFamily(
            "llmos:scheduler_online", "1 while the scheduler answers", value=int(broker.scheduler.is_online)
        )
