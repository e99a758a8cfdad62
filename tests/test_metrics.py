"""`/metrics`, `/health` and `/ready` on every service of a real stack (kernel,
scheduler, broker, one tiny-model worker), each on its own `--metrics-port`."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from service_process import wait_until
from stack import Stack

from llmos.errors import UnknownModel
from llmos.processes import free_port

pytestmark = pytest.mark.e2e

SERVICES = ("kernel", "scheduler", "broker", "worker")
NUM_REQUESTS = 3
MAX_TOKENS = 4


class MetricsStack(Stack):
    def __init__(self, model_dir: Path, log_dir: Path) -> None:
        self.metrics_ports = {name: free_port() for name in SERVICES}
        super().__init__(
            model_dir,
            log_dir,
            num_workers=0,
            broker_args=self.metrics_flags("broker"),
            worker_args=self.metrics_flags("worker"),
        )

    def metrics_flags(self, name: str) -> tuple[str, ...]:
        return ("--metrics-port", str(self.metrics_ports[name]))

    def start_kernel(self, *args: str) -> None:
        super().start_kernel(*args, *self.metrics_flags("kernel"))

    def start_scheduler(self, *args: str) -> None:
        super().start_scheduler(*args, *self.metrics_flags("scheduler"))

    def get(self, name: str, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.metrics_ports[name]}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def samples(self, name: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, text = self.get(name, "/metrics")
        assert status == 200
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }


@pytest.fixture(scope="module")
def stack(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetricsStack]:
    with MetricsStack(tiny_model_dir, tmp_path_factory.mktemp("metrics")) as stack:
        yield stack


def test_health_everywhere_and_the_broker_is_ready_once_a_worker_registers(stack):
    wait_until(lambda: stack.get("scheduler", "/health")[0] == 200, "the services serve /health")
    for name in ("kernel", "scheduler", "broker"):
        assert stack.get(name, "/health") == (200, "ok\n")
    status, why = stack.get("broker", "/ready")
    assert (status, why) == (503, "no worker is registered yet\n")
    stack.start_worker(0)
    stack.wait_ready(num_workers=1)
    assert stack.get("broker", "/ready") == (200, "ready\n")
    wait_until(lambda: stack.get("worker", "/ready")[0] == 200, "the worker is ready")
    assert stack.get("kernel", "/ready")[0] == stack.get("scheduler", "/ready")[0] == 200


def test_the_metrics_count_what_the_stack_did(stack):
    wait_until(lambda: stack.get("worker", "/ready")[0] == 200, "the worker is ready")
    before = stack.samples("broker")
    with stack.client() as client:
        for _ in range(NUM_REQUESTS):
            assert client.generate("count me", max_tokens=MAX_TOKENS).usage.generated_tokens == MAX_TOKENS
        with pytest.raises(UnknownModel):
            client.submit("no such model", model="nope", max_tokens=1)
    after = stack.samples("broker")

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("llmos:requests_admitted_total", tier="standard") == NUM_REQUESTS
    assert grew("llmos:requests_completed_total") == NUM_REQUESTS
    assert grew("llmos:generation_tokens_total") == NUM_REQUESTS * MAX_TOKENS
    assert grew("llmos:requests_rejected_total", code="UNKNOWN_MODEL") == 1
    assert after[("llmos:workers", (("state", "live"),))] == 1
    kernel = stack.samples("kernel")
    assert kernel[("llmos:kernel_workers", ())] == 1
    assert kernel[("llmos:kv_blocks_total", (("worker", "worker-0"),))] > 0
    assert stack.samples("scheduler")[("llmos:scheduler_policy_info", (("policy", "priority"),))] == 1
    worker = stack.samples("worker")
    assert worker[("llmos:worker_registered", (("worker", "worker-0"),))] == 1
