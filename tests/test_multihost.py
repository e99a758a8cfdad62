"""The stack across hosts, for real: Linux network namespaces joined by veth links.

    root ns (this test, the client) --10.N.0.0/24-- core ns (kernel, scheduler, broker)
                                                      |-- 10.N.1.0/24 -- ns w1 (worker w1)
                                                      |-- 10.N.2.0/24 -- ns w2 (worker w2)

Every process runs `ip netns exec NS python -m llmos ...` as a user would start
it on its host, with CURVE on every socket, talking TCP across the links. Then
w1's link goes down mid-stream: the broker declares w1 dead by heartbeat, its
requests finish on w2, and when the link comes back w1 registers again by
itself, the same process. Needs root (CI runs as root); skipped elsewhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from service_process import wait_until

from llmos.client import Client
from llmos.errors import LlmosError
from llmos.processes import ProcessGroup, llmos_command
from llmos.security.service_keys import open_keyring

HEARTBEAT_INTERVAL_MS = 200  # dead after 3 silent periods
SIM_MODEL = "sim"
LONG_MAX_TOKENS = 1500  # seconds of simulated steps: still running when the link goes down
NUM_LONG_REQUESTS = 4
# the services' ports inside the core namespace (a port space of its own)
CLIENT_PORT, WORKER_PORT, KERNEL_PORT, PUB_PORT, SCHEDULER_PORT = 5555, 5556, 5557, 5558, 5559


def can_make_namespaces() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = f"llmos-probe-{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return False
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return True


pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not can_make_namespaces(), reason="needs root and ip netns"),
]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Hosts:
    """Three namespaces and the veth links between them and this one; `remove` undoes it all."""

    def __init__(self) -> None:
        tag = os.getpid() % 10000
        self.subnet = f"10.{64 + os.getpid() % 64}"
        self.core, self.w1, self.w2 = (f"llmos-{tag}-{name}" for name in ("core", "w1", "w2"))
        self.root_link = f"lm{tag}r"  # root's end of the root <-> core link
        self.worker_links = {self.w1: f"lm{tag}w1", self.w2: f"lm{tag}w2"}  # the worker's end

    def make(self) -> None:
        for namespace in (self.core, self.w1, self.w2):
            ip("netns", "add", namespace)
            ip("-n", namespace, "link", "set", "lo", "up")
        root_far = f"{self.root_link}c"
        self.link((None, self.root_link, f"{self.subnet}.0.1"), (self.core, root_far, f"{self.subnet}.0.2"))
        for index, (namespace, name) in enumerate(self.worker_links.items(), start=1):
            core_end = (self.core, f"{name}c", f"{self.subnet}.{index}.1")
            self.link(core_end, (namespace, name, f"{self.subnet}.{index}.2"))

    @staticmethod
    def link(*ends: tuple[str | None, str, str]) -> None:
        """A veth pair between two namespaces (None: this one); each end (namespace, name, address)."""
        (_, near_name, _), (_, far_name, _) = ends
        ip("link", "add", near_name, "type", "veth", "peer", "name", far_name)
        for namespace, name, address in ends:
            prefix: tuple[str, ...] = ()
            if namespace is not None:
                ip("link", "set", name, "netns", namespace)
                prefix = ("-n", namespace)
            ip(*prefix, "addr", "add", f"{address}/24", "dev", name)
            ip(*prefix, "link", "set", name, "up")

    def core_address(self, namespace: str | None) -> str:
        """The core host's address as `namespace` (a worker's, or this one's) reaches it."""
        index = 0 if namespace is None else list(self.worker_links).index(namespace) + 1
        return f"{self.subnet}.{index}.{2 if index == 0 else 1}"

    def set_link(self, namespace: str, state: str) -> None:
        ip("-n", namespace, "link", "set", self.worker_links[namespace], state)

    def remove(self) -> None:
        for namespace in (self.core, self.w1, self.w2):  # deleting one deletes its veth ends
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", self.root_link], capture_output=True)


class Cluster:
    def __init__(self, hosts: Hosts, log_dir: Path) -> None:
        self.hosts = hosts
        self.keys_dir = log_dir / "keys"
        open_keyring(self.keys_dir)  # shared by every "host", as copied keys would be
        env = {
            "LLMOS_HEARTBEAT_INTERVAL_MS": str(HEARTBEAT_INTERVAL_MS),
            "LLMOS_KEYS_DIR": str(self.keys_dir),
            "LLMOS_INSECURE": "0",
        }
        self.group = ProcessGroup(log_dir, env)

    def start(self, name: str, namespace: str, *args: str) -> None:
        self.group.start_argv(name, ["ip", "netns", "exec", namespace, *llmos_command(*args)])

    def start_services(self) -> None:
        core = self.hosts.core
        self.start(
            "kernel", core, "kernel", "--kernel-bind", f"tcp://*:{KERNEL_PORT}",
            "--kernel-pub-bind", f"tcp://*:{PUB_PORT}",
        )  # fmt: skip
        self.start(
            "scheduler", core, "scheduler", "--scheduler-bind", f"tcp://*:{SCHEDULER_PORT}",
            "--kernel-pub-address", f"tcp://127.0.0.1:{PUB_PORT}",
        )  # fmt: skip
        self.start(
            "broker", core, "broker", "--client-bind", f"tcp://*:{CLIENT_PORT}",
            "--worker-bind", f"tcp://*:{WORKER_PORT}", "--scheduler-address", f"tcp://127.0.0.1:{SCHEDULER_PORT}",
            "--journal", "none", "--audit-log", "none",
        )  # fmt: skip

    def start_worker(self, namespace: str, worker_id: str) -> None:
        core = self.hosts.core_address(namespace)
        self.start(
            worker_id, namespace, "worker", "--engine", "sim", "--worker-id", worker_id,
            "--model-name", SIM_MODEL, "--broker-worker-address", f"tcp://{core}:{WORKER_PORT}",
            "--kernel-address", f"tcp://{core}:{KERNEL_PORT}",
        )  # fmt: skip

    def client(self) -> Client:
        return Client(
            f"tcp://{self.hosts.core_address(None)}:{CLIENT_PORT}",
            timeout_s=60,
            key_file=self.keys_dir / "admin.key_secret",
            server_key_file=self.keys_dir / "broker.key",
        )

    def worker_ids(self) -> list[str]:
        self.check_alive()
        try:
            with self.client() as client:
                return sorted(worker.worker_id for worker in client.status().workers)
        except LlmosError:
            return []

    def check_alive(self) -> None:
        exited = self.group.first_exited()
        assert exited is None, f"{exited} exited\n{self.group.log_tails()}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    hosts = Hosts()
    try:
        hosts.make()
        cluster = Cluster(hosts, tmp_path_factory.mktemp("multihost"))
        try:
            cluster.start_services()
            cluster.start_worker(hosts.w1, "w1")
            cluster.start_worker(hosts.w2, "w2")
            wait_until(lambda: cluster.worker_ids() == ["w1", "w2"], "both workers register across the links")
            yield cluster
        finally:
            cluster.group.stop()
    finally:
        hosts.remove()


def test_requests_complete_across_hosts(cluster: Cluster) -> None:
    with cluster.client() as client:
        results = [
            client.generate(f"across hosts {index}", model=SIM_MODEL, max_tokens=4) for index in range(8)
        ]
    assert all(result.usage.generated_tokens == 4 for result in results)
    assert {result.worker_id for result in results} <= {"w1", "w2"}


def test_a_partitioned_worker_is_declared_dead_its_requests_finish_elsewhere_and_it_rejoins(
    cluster: Cluster,
) -> None:
    hosts = cluster.hosts
    w1_process = cluster.group.processes["w1"]
    with cluster.client() as client:
        request_ids = [
            client.submit(f"long answer {index}", model=SIM_MODEL, max_tokens=LONG_MAX_TOKENS)
            for index in range(NUM_LONG_REQUESTS)
        ]
        wait_until(lambda: running_on(client) == {"w1", "w2"}, "requests run on both workers")
        hosts.set_link(hosts.w1, "down")
        try:
            wait_until(lambda: cluster.worker_ids() == ["w2"], "the broker declares w1 dead by heartbeat")
            results = [client.result(request_id) for request_id in request_ids]
        finally:
            hosts.set_link(hosts.w1, "up")
    assert all(result.usage.generated_tokens == LONG_MAX_TOKENS for result in results)
    assert all(result.worker_id == "w2" for result in results)
    assert any(result.num_restarts >= 1 for result in results), "w1's requests moved to w2"

    wait_until(lambda: cluster.worker_ids() == ["w1", "w2"], "w1 registers again once its link is back")
    assert cluster.group.processes["w1"] is w1_process and w1_process.poll() is None, "w1 was not restarted"
    with cluster.client() as client:
        served_by = {
            client.generate(f"after the partition {index}", model=SIM_MODEL, max_tokens=2).worker_id
            for index in range(16)
        }
    assert "w1" in served_by


def running_on(client: Client) -> set[str]:
    return {worker.worker_id for worker in client.status().workers if worker.num_running > 0}
