"""compose.yaml runs real llmos commands with real flags (no Docker needed).

Every service's `command:` must be a `llmos <subcommand> ...` that click accepts,
every LLMOS_* variable under `environment:` must be a field of a service config
dataclass, every address a service connects to must reach the socket the named
service binds for it, and the worker must stay scalable
(`docker compose up --scale worker=N`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from llmos_commands import BIND_FOR_ADDRESS, TCP_ADDRESS, parse_llmos_command

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO_ROOT / "compose.yaml"
SERVICES = ("kernel", "scheduler", "broker", "worker")
MODELS_VOLUME = "${LLMOS_MODELS:-./models}:/models:ro"

# ${NAME}, ${NAME:-default}, ${NAME-default}: compose reads these from the host.
_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


# ---------------------------------------------------------------- helpers


def load_services() -> dict[str, dict[str, Any]]:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    return compose["services"]


def with_defaults(value: str) -> str:
    """Interpolate the way compose does when no host variable is set."""
    return _INTERPOLATION.sub(lambda match: match.group(2) or "", value)


def environment_of(service: dict[str, Any]) -> dict[str, str | None]:
    """`environment:` as a dict; a bare name (passed through from the host) maps to None."""
    environment = service.get("environment") or {}
    if isinstance(environment, dict):
        return {name: None if value is None else str(value) for name, value in environment.items()}
    pairs = (entry.split("=", 1) if "=" in entry else (entry, None) for entry in environment)
    return {name: value for name, value in pairs}


def port_mapping(entry: str | int | dict[str, Any]) -> tuple[str | None, str]:
    """(host port, container port) of one `ports:` entry; host None when not published."""
    if isinstance(entry, dict):
        published = entry.get("published")
        return (None if published is None else str(published)), str(entry["target"])
    parts = str(entry).split("/")[0].split(":")
    return (parts[-2] if len(parts) >= 2 else None), parts[-1]


def config_env_vars() -> set[str]:
    from broker.config import BrokerConfig
    from kernel_svc.config import KernelConfig
    from llmos.config import env_var
    from scheduler_svc.config import SchedulerConfig
    from workers.config import WorkerConfig

    return {
        env_var(field.name)
        for config_cls in (KernelConfig, SchedulerConfig, BrokerConfig, WorkerConfig)
        for field in dataclasses.fields(config_cls)
    }


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return load_services()


# ---------------------------------------------------------------- commands


def test_the_stack_has_its_four_services(services: dict[str, dict[str, Any]]) -> None:
    assert set(SERVICES) <= set(services), f"missing services: {set(SERVICES) - set(services)}"


def parse_command(name: str, service: dict[str, Any]) -> dict[str, Any]:
    """Parse a service's command the way `llmos` would, with the service's
    compose environment; return every option's value, defaults included."""
    command = service["command"]
    assert isinstance(command, list), f"{name}: write command: as a list, not a shell string"
    environment = {
        env_name: with_defaults(value)
        for env_name, value in environment_of(service).items()
        if value is not None
    }
    return parse_llmos_command(name, [with_defaults(str(part)) for part in command], environment)


@pytest.mark.parametrize("name", SERVICES)
def test_command_is_a_real_llmos_subcommand_with_valid_flags(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    parse_command(name, services[name])


def test_every_address_reaches_the_socket_it_means(services: dict[str, dict[str, Any]]) -> None:
    params = {name: parse_command(name, services[name]) for name in SERVICES}
    for name in SERVICES:
        for field, value in params[name].items():
            if field.endswith("_bind"):
                assert str(value).startswith("tcp://*:"), (
                    f"{name}: {field} {value!r} must bind tcp://*:<port> to be reachable "
                    f"from other containers"
                )
    connections = [
        (name, field, value)
        for name in SERVICES
        for field, value in params[name].items()
        if field in BIND_FOR_ADDRESS
    ]
    assert connections, "no service connects to another one"
    for name, field, value in connections:
        address = TCP_ADDRESS.match(str(value))
        assert address is not None, f"{name}: {field} {value!r} is not tcp://<host>:<port>"
        host, port = address["host"], address["port"]
        assert host in params, f"{name}: {field} {value} names no compose service"
        bind_field = BIND_FOR_ADDRESS[field]
        bound = params[host].get(bind_field)
        assert bound == f"tcp://*:{port}", (
            f"{name}: {field} {value} does not reach {host}'s {bind_field} {bound!r}"
        )


# ---------------------------------------------------------------- environment


def test_every_llmos_variable_is_a_config_field(services: dict[str, dict[str, Any]]) -> None:
    known = config_env_vars()
    named = {
        (service_name, env_name)
        for service_name, service in services.items()
        for env_name in environment_of(service)
        if env_name.startswith("LLMOS_")
    }
    unknown = sorted(
        f"{service_name}: {env_name}" for service_name, env_name in named if env_name not in known
    )
    assert not unknown, f"LLMOS_* variables that no service config reads: {unknown}"


# ---------------------------------------------------------------- scaling, ports, image


def test_worker_scales_without_name_or_host_port(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker, "a fixed container_name stops --scale worker=N"
    host_ports = [port_mapping(entry)[0] for entry in worker.get("ports", [])]
    assert all(port is None for port in host_ports), (
        f"worker publishes host ports {host_ports}; replicas would collide"
    )


def test_worker_mounts_the_model_directory_read_only(services: dict[str, dict[str, Any]]) -> None:
    assert MODELS_VOLUME in services["worker"].get("volumes", [])


def test_broker_publishes_its_client_socket_on_5555(services: dict[str, dict[str, Any]]) -> None:
    client_bind = parse_command("broker", services["broker"])["client_bind"]
    container_port = str(client_bind).rsplit(":", 1)[-1]
    mappings = [port_mapping(entry) for entry in services["broker"].get("ports", [])]
    assert ("5555", container_port) in mappings, (
        f"broker must publish host port 5555 to its client socket {client_bind}; ports: {mappings}"
    )


def test_all_services_run_the_image_built_from_the_dockerfile(services: dict[str, dict[str, Any]]) -> None:
    dockerfile = REPO_ROOT / "Dockerfile"
    assert dockerfile.is_file()
    text = dockerfile.read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.MULTILINE)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.MULTILINE)

    images = {name: services[name].get("image") for name in SERVICES}
    assert len(set(images.values())) == 1 and None not in images.values(), (
        f"services must share one image: {images}"
    )
    for name in SERVICES:
        build = services[name].get("build")
        assert build is not None, f"{name}: no build section, so its image may not exist"
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile_name = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        assert (COMPOSE_FILE.parent / context / dockerfile_name).resolve() == dockerfile, (
            f"{name}: builds {context}/{dockerfile_name}, not the project's Dockerfile"
        )


# ---------------------------------------------------------------- observability profile

OBSERVABILITY = ("prometheus", "grafana")


def test_prometheus_and_grafana_run_only_in_the_observability_profile(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in OBSERVABILITY:
        assert services[name].get("profiles") == ["observability"], f"{name} must be opt-in"
    for name in (*SERVICES, "gateway"):
        assert "profiles" not in services[name], f"{name} must start without a profile"
    for name in OBSERVABILITY:
        for entry in services[name].get("ports", []):
            assert str(entry).startswith("127.0.0.1:"), f"{name} publishes {entry} beyond localhost"


def test_observability_mounts_files_the_repo_holds(services: dict[str, dict[str, Any]]) -> None:
    for name in OBSERVABILITY:
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            assert (REPO_ROOT / source).exists(), f"{name} mounts {source}, which is not in the repo"


def test_prometheus_scrapes_every_service_on_its_metrics_port(services: dict[str, dict[str, Any]]) -> None:
    config = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    (discovery,) = jobs["llmos"]["dns_sd_configs"]
    assert set(discovery["names"]) == set(SERVICES), "every llmos service's replicas, by DNS"
    for name in SERVICES:
        environment = environment_of(services[name])
        assert environment.get("LLMOS_METRICS_PORT") == str(discovery["port"]), name
        assert environment.get("LLMOS_METRICS_HOST") == "0.0.0.0", f"{name} must serve /metrics beyond itself"
    (gateway_targets,) = jobs["llmos-gateway"]["static_configs"]
    gateway_port = parse_command("gateway", services["gateway"])["port"]
    assert gateway_targets["targets"] == [f"gateway:{gateway_port}"]


def test_grafana_provisions_prometheus_and_the_llmos_dashboard(services: dict[str, dict[str, Any]]) -> None:
    provisioning = REPO_ROOT / "deploy" / "grafana" / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "llmos.yml").read_text())["providers"]
    mounted = [
        volume for volume in services["grafana"]["volumes"] if volume.startswith("./deploy/grafana/llmos")
    ]
    assert [volume.split(":")[1].rsplit("/", 1)[0] for volume in mounted] == [provider["options"]["path"]]
    dashboard = json.loads((REPO_ROOT / "deploy" / "grafana" / "llmos.json").read_text())
    panel_ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(panel_ids) == len(set(panel_ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", "every query reads the chosen data source"


# ---------------------------------------------------------------- health, start order, GPU

READY_PORTS = {"kernel": 9100, "scheduler": 9100, "broker": 9100, "worker": 9100, "gateway": 8000}


@pytest.mark.parametrize("name", [*READY_PORTS, "worker-gpu"])
def test_every_llmos_service_is_healthy_when_its_ready_endpoint_answers(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    test = services[name]["healthcheck"]["test"]
    assert isinstance(test, str), "a string: podman-compose 1.0.3 pops a shared list's items in place"
    port = READY_PORTS.get(name, 9100)
    assert test.startswith("python3 -c ") and f"http://127.0.0.1:{port}/ready" in test
    if name == "gateway":
        assert parse_command(name, services[name])["port"] == port
    else:
        assert environment_of(services[name])["LLMOS_METRICS_PORT"] == str(port)


def test_start_order_waits_for_health_where_it_matters(services: dict[str, dict[str, Any]]) -> None:
    def condition(name: str, dependency: str) -> str:
        return services[name]["depends_on"][dependency]["condition"]

    assert condition("scheduler", "kernel") == "service_healthy"
    assert condition("broker", "scheduler") == "service_healthy"
    # the broker is ready once a worker registers: a worker must not wait for that
    assert condition("worker", "broker") == "service_started"
    # the gateway's first requests find a model
    assert condition("gateway", "broker") == "service_healthy"


def test_published_ports_stay_on_localhost_unless_asked(services: dict[str, dict[str, Any]]) -> None:
    for name in ("broker", "gateway"):
        for entry in services[name]["ports"]:
            assert with_defaults(str(entry)).startswith("127.0.0.1:"), f"{name} publishes {entry}"


def test_workers_scale_by_replicas_too(services: dict[str, dict[str, Any]]) -> None:
    """podman-compose 1.0.3 ignores --scale and reads deploy.replicas."""
    assert with_defaults(str(services["worker"]["deploy"]["replicas"])) == "1"


def test_the_gpu_worker_is_a_cuda_worker_of_the_same_stack(services: dict[str, dict[str, Any]]) -> None:
    gpu, cpu = services["worker-gpu"], services["worker"]
    assert gpu["profiles"] == ["gpu"]
    params = parse_command("worker-gpu", gpu)
    assert params["device"] == "cuda"
    cpu_params = parse_command("worker", cpu)
    for field in ("broker_worker_address", "kernel_address", "model"):
        assert params[field] == cpu_params[field], field
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert gpu["image"] != cpu["image"], "the CUDA build is an image of its own"
    assert "cu" in with_defaults(gpu["build"]["args"]["TORCH_INDEX_URL"])
    assert with_defaults(cpu["build"]["args"]["TORCH_INDEX_URL"]).endswith("/whl/cpu")


def test_the_image_installs_the_extras_its_services_need() -> None:
    """Every service runs from one image: the worker needs transformers, the gateway fastapi."""
    installs = re.findall(
        r'pip install --no-cache-dir "\.\[([a-z,]+)\]"', (REPO_ROOT / "Dockerfile").read_text()
    )
    assert len(installs) == 1, installs
    assert {"worker", "gateway"} <= set(installs[0].split(","))
