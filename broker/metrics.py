"""The broker's Prometheus metrics, read from its parts at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from broker.service import Broker


def snapshot(counts: dict[str, int]) -> dict[str, int]:
    """A copy of a dict the broker's loop may be adding to meanwhile."""
    for _ in range(10):
        try:
            return dict(counts)
        except RuntimeError:  # it grew while being copied: try again
            continue
    return {}


class BrokerCollector(Collector):
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        broker = self.broker
        front, queue = broker.client_front, broker.requests.queue
        waiting = GaugeMetricFamily("llmos:num_requests_waiting", "requests queued, by tier", labels=["tier"])
        for tier in queue.tiers:
            waiting.add_metric([tier], queue.depth(tier))
        yield waiting
        admitted = CounterMetricFamily(
            "llmos:requests_admitted", "requests accepted, by tier", labels=["tier"]
        )
        for tier, count in snapshot(front.num_admitted_by_tier).items():
            admitted.add_metric([tier], count)
        yield admitted
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
        yield CounterMetricFamily(
            "llmos:generation_tokens", "tokens relayed to clients", value=broker.worker_front.num_tokens
        )
        yield GaugeMetricFamily(
            "llmos:num_requests_running", "requests on workers", value=broker.num_running()
        )
        workers = GaugeMetricFamily("llmos:workers", "registered workers", labels=["state"])
        draining = sum(1 for worker in broker.workers if worker.is_draining)
        workers.add_metric(["live"], len(broker.workers) - draining)
        workers.add_metric(["draining"], draining)
        yield workers
        yield CounterMetricFamily(
            "llmos:refused_messages",
            "frames and messages refused from any peer",
            value=broker.peer_errors.total,
        )
        yield GaugeMetricFamily(
            "llmos:scheduler_online", "1 while the scheduler answers", value=int(broker.scheduler.is_online)
        )
