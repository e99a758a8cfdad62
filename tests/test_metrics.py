"""`/metrics`, `/health` and `/ready` on every service of a real stack (kernel,
scheduler, broker, a simulated worker, then one tiny-model worker), each on its
own `--metrics-port`."""

from __future__ import annotations

import json
import re
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
from llmos.wire.constants import DEFAULT_TENANT

pytestmark = pytest.mark.e2e

SERVICES = ("kernel", "scheduler", "broker", "sim", "worker")
SIM_MODEL = "simulated"
SIM_WORKER = "sim"
NUM_REQUESTS = 3
MAX_TOKENS = 4
MAX_TENANT_LABELS = 4
LONG_MAX_TOKENS = 2000  # seconds of simulated steps: still running when its worker is killed

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class MetricsStack(Stack):
    def __init__(self, model_dir: Path, log_dir: Path, with_scheduler: bool = True) -> None:
        self.metrics_ports = {name: free_port() for name in SERVICES}
        super().__init__(
            model_dir,
            log_dir,
            num_workers=0,
            with_scheduler=with_scheduler,
            broker_args=(*self.metrics_flags("broker"), "--metrics-max-tenants", str(MAX_TENANT_LABELS)),
            worker_args=self.metrics_flags("worker"),
        )

    def metrics_flags(self, name: str) -> tuple[str, ...]:
        return ("--metrics-port", str(self.metrics_ports[name]))

    def start_kernel(self, *args: str) -> None:
        super().start_kernel(*args, *self.metrics_flags("kernel"))

    def start_scheduler(self, *args: str) -> None:
        super().start_scheduler(*args, *self.metrics_flags("scheduler"))

    def start_metrics_sim_worker(self, *args: str) -> None:
        """The simulated worker, serving its metrics too; `ensure_sim_worker` waits for it."""
        self.start_sim_worker(SIM_MODEL, SIM_WORKER, *self.metrics_flags("sim"), *args, num_ready=0)

    def ensure_sim_worker(self) -> None:
        """The simulated worker, started and ready (the first test starts it, after
        checking the stack without it; a test run alone starts it here)."""
        if SIM_WORKER not in self.processes:
            self.start_metrics_sim_worker()
        wait_until(lambda: is_serving(self, SIM_WORKER), "the simulated worker serves /health")
        wait_until(lambda: self.get(SIM_WORKER, "/ready")[0] == 200, "the simulated worker is ready")

    def get(self, name: str, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.metrics_ports[name]}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def samples(self, name: str) -> Samples:
        status, text = self.get(name, "/metrics")
        assert status == 200
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }


def is_serving(stack: MetricsStack, name: str) -> bool:
    try:
        return stack.get(name, "/health")[0] == 200
    except OSError:  # not listening yet
        return False


@pytest.fixture(scope="module")
def stack(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetricsStack]:
    with MetricsStack(tiny_model_dir, tmp_path_factory.mktemp("metrics")) as stack:
        yield stack


def test_health_everywhere_and_the_broker_is_ready_once_a_worker_registers(stack):
    for name in ("kernel", "scheduler", "broker"):
        wait_until(lambda name=name: is_serving(stack, name), f"the {name} serves /health")
        assert stack.get(name, "/health") == (200, "ok\n")
    assert stack.get("broker", "/ready") == (503, "no worker is registered yet\n")
    assert stack.get("kernel", "/ready") == stack.get("scheduler", "/ready") == (200, "ready\n")
    stack.ensure_sim_worker()
    stack.wait_ready(num_workers=1)
    assert stack.get("broker", "/ready") == (200, "ready\n")
    assert stack.get("sim", "/ready") == (200, "ready\n")


def test_the_broker_counts_what_its_clients_did(stack):
    stack.ensure_sim_worker()
    before = stack.samples("broker")
    num_prompt_tokens = 0
    with stack.client() as client:
        for _ in range(NUM_REQUESTS):
            result = client.generate("count me", model=SIM_MODEL, max_tokens=MAX_TOKENS)
            assert result.usage.generated_tokens == MAX_TOKENS
            num_prompt_tokens += result.usage.prompt_tokens
        with pytest.raises(UnknownModel):
            client.submit("no such model", model="nope", max_tokens=1)
    after = stack.samples("broker")

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    mine = {"tenant": DEFAULT_TENANT, "model": SIM_MODEL}
    assert grew("llmos:requests_admitted_total", tier="standard", **mine) == NUM_REQUESTS
    assert grew("llmos:requests_completed_total") == NUM_REQUESTS
    assert grew("llmos:request_success_total", finish_reason="length", **mine) == NUM_REQUESTS
    assert grew("llmos:generation_tokens_total", **mine) == NUM_REQUESTS * MAX_TOKENS
    assert grew("llmos:prompt_tokens_total", **mine) == num_prompt_tokens > 0
    assert grew("llmos:scheduler_fallbacks_total") == 0
    assert grew("llmos:requests_rejected_total", code="UNKNOWN_MODEL") == 1
    for histogram in (
        "llmos:time_to_first_token_seconds",
        "llmos:time_per_output_token_seconds",
        "llmos:e2e_request_latency_seconds",
        "llmos:request_queue_time_seconds",
    ):
        assert grew(f"{histogram}_count", tier="standard", model=SIM_MODEL) == NUM_REQUESTS, histogram
        assert grew(f"{histogram}_bucket", tier="standard", model=SIM_MODEL, le="+Inf") == NUM_REQUESTS, (
            histogram
        )
    assert after[("llmos:workers", (("state", "live"),))] == 1
    assert after[("llmos:workers", (("state", "draining"),))] == 0
    assert after[("llmos:num_requests_waiting", (("tier", "standard"),))] == 0
    assert after[("llmos:num_requests_running", (("tier", "standard"),))] == 0
    assert after[("llmos:scheduler_online", ())] == 1
    assert (
        after[("llmos:broker_loop_lag_seconds_count", ())]
        > before[("llmos:broker_loop_lag_seconds_count", ())]
    )


def test_tenant_labels_are_bounded_and_the_rest_count_as_other(stack):
    """Tenants are the clients' to name: past --metrics-max-tenants they share one label."""
    stack.ensure_sim_worker()
    tenants = [f"flood-{index}" for index in range(MAX_TENANT_LABELS + 2)]
    before = stack.samples("broker")
    with stack.client() as client:
        for tenant in tenants:
            client.generate("which tenant am I", model=SIM_MODEL, max_tokens=1, tenant=tenant)
    after = stack.samples("broker")

    def admitted(samples: Samples) -> dict[str, float]:
        return {
            dict(labels)["tenant"]: value
            for (name, labels), value in samples.items()
            if name == "llmos:requests_admitted_total"
        }

    labels_after = admitted(after)
    assert len(set(labels_after) - {"other"}) <= MAX_TENANT_LABELS
    assert labels_after["other"] - admitted(before).get("other", 0) >= 2
    grown = sum(labels_after.values()) - sum(admitted(before).values())
    assert grown == len(tenants)


def test_the_kernel_scheduler_and_simulated_worker_show_their_state(stack):
    stack.ensure_sim_worker()
    with stack.client() as client:
        client.generate("place me", model=SIM_MODEL, max_tokens=1)
    kernel = stack.samples("kernel")
    assert kernel[("llmos:kernel_workers", ())] == 1
    assert kernel[("llmos:kv_blocks_total", (("worker", SIM_WORKER),))] > 0
    assert ("llmos:kv_blocks_used", (("worker", SIM_WORKER),)) in kernel
    scheduler = stack.samples("scheduler")
    assert scheduler[("llmos:scheduler_policy_info", (("policy", "priority"),))] == 1
    assert scheduler[("llmos:scheduler_decision_seconds_count", (("policy", "priority"),))] >= 1
    sim = stack.samples("sim")
    assert sim[("llmos:worker_registered", (("worker", SIM_WORKER),))] == 1
    assert sim[("llmos:worker_num_running", (("worker", SIM_WORKER),))] == 0
    assert sim[("llmos:worker_kv_blocks_used", (("worker", SIM_WORKER),))] == 0


def test_a_tiny_model_worker_is_ready_once_registered_and_shows_its_state(stack):
    stack.ensure_sim_worker()
    stack.start_worker(0)
    stack.wait_ready(num_workers=2)
    wait_until(lambda: is_serving(stack, "worker"), "the worker serves /health")
    wait_until(lambda: stack.get("worker", "/ready")[0] == 200, "the worker is ready")
    assert stack.get("worker", "/ready") == (200, "ready\n")
    worker = stack.samples("worker")
    assert worker[("llmos:worker_registered", (("worker", "worker-0"),))] == 1
    assert worker[("llmos:worker_num_running", (("worker", "worker-0"),))] == 0
    assert worker[("llmos:worker_kv_blocks_used", (("worker", "worker-0"),))] == 0
    assert worker[("llmos:prefix_cache_hits_total", (("worker", "worker-0"),))] == 0
    # The kernel's metrics read its latest published view, which follows a registration
    # by up to MIN_PUBLISH_INTERVAL_S.
    wait_until(
        lambda: stack.samples("kernel")[("llmos:kernel_workers", ())] == 2,
        "the kernel's view shows both workers",
    )
    assert stack.samples("kernel")[("llmos:kv_blocks_total", (("worker", "worker-0"),))] > 0


def test_every_dashboard_query_names_a_metric_the_stack_exports(stack):
    """deploy/grafana/llmos.json reads what a running stack serves, gateway included."""
    pytest.importorskip("fastapi", reason="pip install 'llmos[gateway]'")
    stack.ensure_sim_worker()
    if "worker-0" not in stack.processes:
        stack.start_worker(0)
    stack.wait_ready(num_workers=2)
    gateway_port = free_port()
    stack.start_process(
        "gateway",
        "gateway",
        "--port",
        str(gateway_port),
        "--broker-address",
        stack.broker_address,
        "--insecure",
    )
    stack.metrics_ports["gateway"] = gateway_port  # the gateway serves /metrics on its HTTP port
    wait_until(lambda: is_serving(stack, "gateway"), "the gateway serves /health")
    with stack.client() as client:  # a sample in every labelled family
        client.generate("dashboard", model=SIM_MODEL, max_tokens=2)
        client.generate("dashboard", max_tokens=2)  # the tiny model's worker
        with pytest.raises(UnknownModel):
            client.submit("no such model", model="nope", max_tokens=1)
    assert stack.get("gateway", "/v1/models")[0] == 200
    exported: set[str] = set()
    for name in (*SERVICES, "gateway"):
        status, text = stack.get(name, "/metrics")
        assert status == 200, name
        for family in text_string_to_metric_families(text):
            exported.add(family.name)
            exported.update(f"{family.name}{suffix}" for suffix in FAMILY_SUFFIXES[family.type])
            exported.update(sample.name for sample in family.samples)
    queries = dashboard_queries()
    assert len(queries) >= 20
    named = {name for query in queries for name in METRIC_NAME.findall(query)}
    assert named, "the dashboard's queries name no llmos metric"
    assert sorted(named - exported) == []


# what a family's samples are called, by its type (a counter's family drops _total)
FAMILY_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "gauge": ("",),
    "info": ("_info",),
    "summary": ("_count", "_sum"),
    "unknown": ("",),
}
METRIC_NAME = re.compile(r"llmos:[A-Za-z_][A-Za-z0-9_:]*")
DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "llmos.json"


def dashboard_queries() -> list[str]:
    """Every PromQL expression in the dashboard, row panels' children included."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [*dashboard["panels"]]
    queries = []
    while panels:
        panel = panels.pop()
        panels.extend(panel.get("panels", []))
        queries.extend(target["expr"] for target in panel.get("targets", []))
    return queries


@pytest.fixture(scope="module")
def stack_without_scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetricsStack]:
    log_dir = tmp_path_factory.mktemp("metrics-no-scheduler")
    with MetricsStack(log_dir, log_dir, with_scheduler=False) as stack:
        stack.start_metrics_sim_worker("--max-num-seqs", "1")  # one slot: a top-tier arrival preempts
        stack.wait_ready(num_workers=1)
        yield stack


def test_batches_decided_without_the_scheduler_are_fallbacks(stack_without_scheduler):
    stack = stack_without_scheduler
    with stack.client() as client:
        client.generate("no scheduler here", model=SIM_MODEL, max_tokens=1)
    broker = stack.samples("broker")
    assert broker[("llmos:scheduler_fallbacks_total", ())] >= 1
    assert broker[("llmos:scheduler_online", ())] == 0


def test_a_top_tier_arrival_on_a_full_worker_preempts_and_is_counted(stack_without_scheduler):
    stack = stack_without_scheduler
    running = ("llmos:num_requests_running", (("tier", "batch"),))
    with stack.client() as client:
        batch_id = client.submit(
            "a long batch answer", model=SIM_MODEL, max_tokens=LONG_MAX_TOKENS, tier="batch"
        )
        wait_until(lambda: stack.samples("broker")[running] == 1, "the batch request runs")
        before = stack.samples("broker")[("llmos:num_preemptions_total", ())]
        client.generate("urgent", model=SIM_MODEL, max_tokens=1, tier="interactive")
        client.cancel(batch_id)
    broker = stack.samples("broker")
    assert broker[("llmos:num_preemptions_total", ())] - before == 1
    assert broker[("llmos:requests_requeued_total", ())] == 0  # a preemption is no lost worker


def test_a_request_whose_worker_dies_is_counted_requeued(stack_without_scheduler):
    stack = stack_without_scheduler
    running = ("llmos:num_requests_running", (("tier", "standard"),))
    requeued = ("llmos:requests_requeued_total", ())
    with stack.client() as client:
        client.submit("a long answer", model=SIM_MODEL, max_tokens=LONG_MAX_TOKENS)
        wait_until(lambda: stack.samples("broker")[running] == 1, "the request runs")
        assert stack.samples("broker")[requeued] == 0
        stack.kill("sim")
        wait_until(lambda: stack.samples("broker")[requeued] == 1, "the broker re-queues it")
        broker = stack.samples("broker")  # while the client is here to wait for it
        assert broker[running] == 0
        assert broker[("llmos:num_requests_waiting", (("tier", "standard"),))] == 1
        assert broker[("llmos:workers", (("state", "live"),))] == 0
        assert stack.get("broker", "/ready") == (503, "no worker is registered yet\n")
