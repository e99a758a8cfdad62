"""Prometheus collectors of the kernel, the scheduler and the model worker (the
broker's, larger, is broker/metrics.py). Each reads at scrape time what its
service's loop keeps; none holds a reference the loop would have to lock. The
scheduler's decision time is a histogram its loop observes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from llmos.wire import pb
from llmos.wire.peer_errors import PeerErrors

T = TypeVar("T")

DECISION_BUCKETS_S = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


def read_while_changing(read: Callable[[], T], default: T) -> T:
    """`read()` of state the service's loop may change meanwhile (a dict that grows
    while copied raises RuntimeError): tried a few times, else `default`."""
    for _ in range(10):
        try:
            return read()
        except RuntimeError:
            continue
    return default


def registry_of(*collectors: Collector) -> CollectorRegistry:
    """A registry of this process's own (never the global default) holding `collectors`."""
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    return registry


class RefusalCollector(Collector):
    """`llmos:refused_messages_total{kind}` from a service's PeerErrors (kinds are
    the code's own names and error codes: bounded)."""

    def __init__(self, peer_errors: PeerErrors) -> None:
        self.peer_errors = peer_errors

    def collect(self) -> Iterator[CounterMetricFamily]:
        refused = CounterMetricFamily(
            "llmos:refused_messages", "frames and messages refused from any peer, by kind", labels=["kind"]
        )
        no_counts: dict[str, int] = {}
        counts = read_while_changing(lambda: dict(self.peer_errors.count_by_kind), no_counts)
        for kind, count in counts.items():
            refused.add_metric([kind], count)
        yield refused


class KernelCollector(Collector):
    """From the latest resource view the kernel built (a message the loop replaces whole)."""

    def __init__(self, latest_view: Callable[[], pb.ResourceView | None]) -> None:
        self.latest_view = latest_view

    def collect(self) -> Iterator[GaugeMetricFamily]:
        view = self.latest_view()
        workers = [] if view is None else list(view.workers)
        yield GaugeMetricFamily(
            "llmos:kernel_workers", "workers registered with the kernel", value=len(workers)
        )
        used = GaugeMetricFamily("llmos:kv_blocks_used", "KV blocks allocated, by worker", labels=["worker"])
        total = GaugeMetricFamily("llmos:kv_blocks_total", "KV blocks, by worker", labels=["worker"])
        for worker in workers:
            used.add_metric([worker.worker_id], worker.kv_blocks_used)
            total.add_metric([worker.worker_id], worker.kv_blocks_total)
        yield used
        yield total


class SchedulerCollector(Collector):
    def __init__(self, policy_name: Callable[[], str], has_view: Callable[[], bool]) -> None:
        self.policy_name = policy_name
        self.has_view = has_view

    def collect(self) -> Iterator[GaugeMetricFamily]:
        info = GaugeMetricFamily("llmos:scheduler_policy_info", "the policy in use", labels=["policy"])
        info.add_metric([self.policy_name()], 1)
        yield info
        yield GaugeMetricFamily(
            "llmos:scheduler_has_view", "1 while a fresh kernel view is held", value=int(self.has_view())
        )


def decision_histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram(
        "llmos:scheduler_decision_seconds",
        "time one batch's decision takes, by policy",
        ["policy"],
        buckets=DECISION_BUCKETS_S,
        registry=registry,
    )


@dataclass(frozen=True)
class WorkerGauges:
    """One worker's state as a scrape reads it."""

    worker_id: str
    num_running: int
    num_kv_blocks_used: int
    is_registered: bool
    num_prefix_hit_tokens: int | None = None  # None: the engine caches no prefixes


class WorkerCollector(Collector):
    """The model worker's gauges (one worker), or a simulated pool's (one per worker)."""

    def __init__(self, read_workers: Callable[[], list[WorkerGauges]]) -> None:
        self.read_workers = read_workers

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        no_workers: list[WorkerGauges] = []
        workers = read_while_changing(self.read_workers, no_workers)
        running = GaugeMetricFamily(
            "llmos:worker_num_running", "requests this worker runs", labels=["worker"]
        )
        used = GaugeMetricFamily(
            "llmos:worker_kv_blocks_used", "KV blocks the running requests hold", labels=["worker"]
        )
        registered = GaugeMetricFamily(
            "llmos:worker_registered", "1 while the broker answers this worker", labels=["worker"]
        )
        hits = CounterMetricFamily(
            "llmos:prefix_cache_hits", "prompt tokens read from the prefix cache", labels=["worker"]
        )
        for worker in workers:
            running.add_metric([worker.worker_id], worker.num_running)
            used.add_metric([worker.worker_id], worker.num_kv_blocks_used)
            registered.add_metric([worker.worker_id], int(worker.is_registered))
            if worker.num_prefix_hit_tokens is not None:
                hits.add_metric([worker.worker_id], worker.num_prefix_hit_tokens)
        yield from (running, used, registered)
        if hits.samples:
            yield hits
