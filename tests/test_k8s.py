"""deploy/k8s renders to a valid stack that runs real llmos commands (no cluster needed).

Each overlay is rendered with `kubectl kustomize` (kustomize built into kubectl,
offline) and every object is checked against the Kubernetes JSON schemas that
kubernetes-validate ships. Every llmos container's command must parse with the
real CLI under the environment the pod gives it (its env and the ConfigMap's
LLMOS_* values), every tcp://HOST:PORT it dials must reach a Service that routes
to the container binding that socket, and the probes, the drain on SIGTERM, the
keys and the autoscalers must agree with what the services do.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from llmos_commands import BIND_FOR_ADDRESS, TCP_ADDRESS, config_class, config_env_vars, parse_llmos_command

REPO_ROOT = Path(__file__).resolve().parent.parent
K8S_DIR = REPO_ROOT / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu")
DEVICE_OF_OVERLAY = {"cpu": "cpu", "gpu": "cuda"}
# The oldest Kubernetes the manifests are checked against (PodDisruptionBudget
# policy/v1 and autoscaling/v2 HPAs are GA there).
KUBERNETES_VERSION = "1.30.0"
SERVICES = ("kernel", "scheduler", "broker", "worker", "gateway")
# Every process but the gateway serves /metrics, /health and /ready on --metrics-port;
# the gateway serves them on its HTTP port.
METRICS_PORT = 9100
KEYS_DIR = "/keys"
KEYS_SECRET = "llmos-keys"
IMAGE = "llmos:latest"
_SLEEP = re.compile(r"^sleep (?P<seconds>\d+)$")
_METRIC_NAME = re.compile(r"llmos:[a-z_]+")
_METRIC_LITERAL = re.compile(r"[\"'](llmos:[a-z_]+)[\"']")


# ---------------------------------------------------------------- rendering


@functools.cache
def render(directory: str) -> tuple[dict[str, Any], ...]:
    """The objects `kubectl kustomize deploy/k8s/<directory>` builds."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: its built-in kustomize renders the manifests")
    built = subprocess.run(
        [kubectl, "kustomize", str(K8S_DIR / directory)], capture_output=True, text=True, check=False
    )
    assert built.returncode == 0, f"kubectl kustomize {directory} failed:\n{built.stderr}"
    return tuple(obj for obj in yaml.safe_load_all(built.stdout) if obj)


def objects_of(directory: str, kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in render(directory) if obj["kind"] == kind}


def overlay(name: str) -> str:
    return f"overlays/{name}"


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]


def llmos_containers(directory: str) -> list[tuple[str, dict[str, Any]]]:
    """(Deployment name, container) for every container that runs `llmos`."""
    return [
        (name, container)
        for name, deployment in objects_of(directory, "Deployment").items()
        for container in pod_spec(deployment)["containers"] + pod_spec(deployment).get("initContainers", [])
        if container_command(container)[:1] == ["llmos"]
    ]


def container_command(container: dict[str, Any]) -> list[str]:
    return [str(part) for part in container.get("command", []) + container.get("args", [])]


def container_environment(directory: str, container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet sets it: envFrom ConfigMaps first,
    then env, which wins. Only plain values; a valueFrom is not expected here."""
    config_maps = objects_of(directory, "ConfigMap")
    environment: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert set(source) == {"configMapRef"}, f"{container['name']}: only ConfigMap envFrom is expected"
        environment.update(config_maps[source["configMapRef"]["name"]]["data"])
    for variable in container.get("env", []):
        assert "valueFrom" not in variable, f"{container['name']}: {variable['name']} has no plain value"
        environment[variable["name"]] = str(variable["value"])
    return environment


def parse_container(directory: str, deployment_name: str, container: dict[str, Any]) -> dict[str, Any]:
    """The container's options as `llmos` parses them, after its config dataclass
    accepted them (its own checks included)."""
    command = container_command(container)
    params = parse_llmos_command(
        f"{directory} {deployment_name}/{container['name']}",
        command,
        container_environment(directory, container),
    )
    config_class(command[1])(**params)
    return params


def subcommand_of(container: dict[str, Any]) -> str:
    return container_command(container)[1]


def container_port(container: dict[str, Any], port: int | str) -> int:
    """The container port a probe or a Service's targetPort names (by number or name)."""
    declared = {
        entry["name"]: entry["containerPort"] for entry in container.get("ports", []) if "name" in entry
    }
    numbers = {entry["containerPort"] for entry in container.get("ports", [])}
    if isinstance(port, str):
        assert port in declared, f"{container['name']}: no port named {port!r}; declared: {declared}"
        return declared[port]
    assert port in numbers, f"{container['name']}: port {port} is not declared; declared: {sorted(numbers)}"
    return port


def deployments_selected(directory: str, selector: dict[str, str]) -> list[str]:
    return [
        name
        for name, deployment in objects_of(directory, "Deployment").items()
        if selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    ]


def sdk_env_vars() -> set[str]:
    """Read by the SDK the gateway speaks to the broker with, not by a config field."""
    from llmos.security import client_keys

    return {
        client_keys.KEYS_DIR_ENV,
        client_keys.KEY_ENV,
        client_keys.SERVER_KEY_ENV,
        client_keys.INSECURE_ENV,
    }


def exported_metrics() -> set[str]:
    """Every llmos:* metric name the services' code exports."""
    sources = [
        REPO_ROOT / package for package in ("broker", "kernel_svc", "scheduler_svc", "workers", "gateway")
    ]
    return {
        name
        for source in sources
        for path in source.rglob("*.py")
        for name in _METRIC_LITERAL.findall(path.read_text())
    }


# ---------------------------------------------------------------- what renders


@pytest.mark.parametrize("name", OVERLAYS)
def test_each_overlay_renders_the_whole_stack(name: str) -> None:
    kinds = {(obj["kind"], obj["metadata"]["name"]) for obj in render(overlay(name))}
    assert kinds == {
        *(("Deployment", service) for service in SERVICES),
        *(("Service", service) for service in ("kernel", "scheduler", "broker", "gateway")),
        ("ConfigMap", "llmos-config"),
        ("PersistentVolumeClaim", "broker-journal"),
        ("PodDisruptionBudget", "worker"),
    }
    namespaced = [obj["metadata"]["name"] for obj in render(overlay(name)) if "namespace" in obj["metadata"]]
    assert not namespaced, f"the manifests must not pick a namespace (kubectl -n does): {namespaced}"


@pytest.mark.parametrize("directory", [*(overlay(name) for name in OVERLAYS), "autoscaling/hpa"])
def test_every_object_is_valid_kubernetes(directory: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    problems = []
    for obj in render(directory):
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(part) for part in exc.path)
            problems.append(f"{obj['kind']}/{obj['metadata']['name']} at {where}: {exc.message}")
    assert not problems, f"{directory}: objects Kubernetes {KUBERNETES_VERSION} would refuse: {problems}"


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_container_runs_the_llmos_image(name: str) -> None:
    for deployment_name, deployment in objects_of(overlay(name), "Deployment").items():
        spec = pod_spec(deployment)
        for container in spec["containers"] + spec.get("initContainers", []):
            assert (container["image"], container["imagePullPolicy"]) == (IMAGE, "IfNotPresent"), (
                f"{deployment_name}/{container['name']}"
            )


# ---------------------------------------------------------------- commands and addresses


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_llmos_container_parses_with_the_real_cli(name: str) -> None:
    containers = llmos_containers(overlay(name))
    assert sorted(subcommand_of(container) for _, container in containers) == sorted(SERVICES)
    for deployment_name, container in containers:
        params = parse_container(overlay(name), deployment_name, container)
        if subcommand_of(container) == "broker":
            from broker.config import BrokerConfig
            from broker.tiers import parse_tenant_quotas, parse_tier_limits

            config = BrokerConfig(**params)
            assert parse_tier_limits(config).keys() == set(config.tier_names)
            parse_tenant_quotas(config.tenant_quotas)


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_llmos_variable_is_read_by_the_service_it_is_given_to(name: str) -> None:
    config_maps = objects_of(overlay(name), "ConfigMap")
    readers: dict[str, set[str]] = {}
    for deployment_name, container in llmos_containers(overlay(name)):
        subcommand = subcommand_of(container)
        known = config_env_vars(subcommand) | (sdk_env_vars() if subcommand == "gateway" else set())
        unknown = {variable["name"] for variable in container.get("env", [])} - known
        assert not unknown, (
            f"{deployment_name}: {sorted(unknown)} are no fields of llmos {subcommand}'s config"
        )
        for source in container.get("envFrom", []):
            readers.setdefault(source["configMapRef"]["name"], set()).update(config_env_vars(subcommand))
    for config_map_name, config_map in config_maps.items():
        unread = set(config_map["data"]) - readers.get(config_map_name, set())
        assert not unread, f"ConfigMap {config_map_name}: no service that reads it has {sorted(unread)}"


def test_the_config_map_holds_tiers_queue_depth_quotas_and_the_policy() -> None:
    data = objects_of(overlay("cpu"), "ConfigMap")["llmos-config"]["data"]
    for variable in ("LLMOS_TIERS", "LLMOS_MAX_QUEUE_DEPTH", "LLMOS_TENANT_QUOTAS", "LLMOS_POLICY"):
        assert variable in data


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_address_reaches_a_service_that_routes_to_its_binder(name: str) -> None:
    directory = overlay(name)
    services = objects_of(directory, "Service")
    deployments = objects_of(directory, "Deployment")
    parsed = {
        (deployment_name, container["name"]): parse_container(directory, deployment_name, container)
        for deployment_name, container in llmos_containers(directory)
    }
    for params in parsed.values():
        for field, value in params.items():
            if field.endswith("_bind"):
                assert str(value).startswith("tcp://*:"), f"{field} {value!r} must bind every interface"
    dialed = [(who, field, value) for who, params in parsed.items() for field, value in params.items()]
    connections = [(who, field, value) for who, field, value in dialed if field in BIND_FOR_ADDRESS]
    assert len(connections) >= 5, f"expected every service's addresses, got {connections}"
    for (deployment_name, _), field, value in connections:
        address = TCP_ADDRESS.match(str(value))
        assert address is not None, f"{deployment_name}: {field} {value!r} is not tcp://<host>:<port>"
        host, port = address["host"], int(address["port"])
        assert host in services, f"{deployment_name}: {field} {value} names no Service"
        service_ports = {entry["port"]: entry for entry in services[host]["spec"]["ports"]}
        assert port in service_ports, f"{deployment_name}: {field} {value}: Service {host} has no port {port}"
        (target,) = deployments_selected(directory, services[host]["spec"]["selector"])
        (container,) = pod_spec(deployments[target])["containers"]
        target_port = container_port(container, service_ports[port]["targetPort"])
        bound = parsed[(target, container["name"])][BIND_FOR_ADDRESS[field]]
        assert bound == f"tcp://*:{target_port}", (
            f"{deployment_name}: {field} {value} reaches {target}'s port {target_port}, "
            f"but it binds {BIND_FOR_ADDRESS[field]} {bound}"
        )


def test_the_broker_service_routes_to_the_broker_before_it_is_ready() -> None:
    # The broker's /ready answers 200 only once a worker has registered, and a
    # worker registers through this Service: without this, neither ever starts.
    assert objects_of(overlay("cpu"), "Service")["broker"]["spec"]["publishNotReadyAddresses"] is True


# ---------------------------------------------------------------- probes


@pytest.mark.parametrize("name", OVERLAYS)
def test_probes_ask_the_port_the_service_serves_them_on(name: str) -> None:
    for deployment_name, deployment in objects_of(overlay(name), "Deployment").items():
        (container,) = pod_spec(deployment)["containers"]
        params = parse_container(overlay(name), deployment_name, container)
        if subcommand_of(container) == "gateway":
            served_on = params["port"]
        else:
            assert (params["metrics_port"], params["metrics_host"]) == (METRICS_PORT, "0.0.0.0"), (
                deployment_name
            )
            served_on = METRICS_PORT
        paths = {}
        for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe_name in container:
                probe = container[probe_name]["httpGet"]
                assert container_port(container, probe["port"]) == served_on, (
                    f"{deployment_name} {probe_name}"
                )
                paths[probe_name] = probe["path"]
        assert paths["readinessProbe"] == "/ready", deployment_name
        assert paths["livenessProbe"] == "/health", deployment_name
        assert paths.get("startupProbe", "/health") == "/health", deployment_name


# ---------------------------------------------------------------- workers


def worker_container(directory: str) -> dict[str, Any]:
    (container,) = pod_spec(objects_of(directory, "Deployment")["worker"])["containers"]
    return container


@pytest.mark.parametrize("name", OVERLAYS)
def test_a_worker_has_time_to_drain_before_it_is_killed(name: str) -> None:
    worker = objects_of(overlay(name), "Deployment")["worker"]
    container = worker_container(overlay(name))
    drain_timeout_s = parse_container(overlay(name), "worker", container)["drain_timeout_s"]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    sleep = _SLEEP.match(" ".join(pre_stop))
    assert sleep is not None, f"preStop only pauses (SIGTERM starts the drain), not {pre_stop}"
    grace_s = pod_spec(worker)["terminationGracePeriodSeconds"]
    assert int(sleep["seconds"]) + drain_timeout_s < grace_s, (
        f"preStop {sleep['seconds']} s + drain {drain_timeout_s} s must fit the {grace_s} s grace period"
    )
    assert worker["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


@pytest.mark.parametrize("name", OVERLAYS)
def test_workers_have_a_disruption_budget_and_resources(name: str) -> None:
    budget = objects_of(overlay(name), "PodDisruptionBudget")["worker"]
    assert deployments_selected(overlay(name), budget["spec"]["selector"]["matchLabels"]) == ["worker"]
    resources = worker_container(overlay(name))["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys() and "memory" in resources["limits"]


@pytest.mark.parametrize("name", OVERLAYS)
def test_each_overlay_runs_workers_on_its_device(name: str) -> None:
    container = worker_container(overlay(name))
    assert parse_container(overlay(name), "worker", container)["device"] == DEVICE_OF_OVERLAY[name]
    limits = container["resources"]["limits"]
    tolerations = pod_spec(objects_of(overlay(name), "Deployment")["worker"]).get("tolerations", [])
    if name == "gpu":
        assert limits["nvidia.com/gpu"] == 1
        assert [toleration["key"] for toleration in tolerations] == ["nvidia.com/gpu"]
    else:
        assert "nvidia.com/gpu" not in limits and not tolerations


def test_cpu_workers_run_one_torch_thread_per_cpu_of_their_limit() -> None:
    container = worker_container(overlay("cpu"))
    assert parse_container(overlay("cpu"), "worker", container)["threads"] == int(
        container["resources"]["limits"]["cpu"]
    )


# ---------------------------------------------------------------- broker state and keys


def test_the_broker_runs_alone_with_its_journal_on_a_volume_claim() -> None:
    broker = objects_of(overlay("cpu"), "Deployment")["broker"]
    assert broker["spec"]["replicas"] == 1 and broker["spec"]["strategy"]["type"] == "Recreate"
    (container,) = pod_spec(broker)["containers"]
    params = parse_container(overlay("cpu"), "broker", container)
    claims = {
        volume["name"]: volume["persistentVolumeClaim"]["claimName"]
        for volume in pod_spec(broker)["volumes"]
        if "persistentVolumeClaim" in volume
    }
    for path in (params["journal"], params["audit_log"]):
        (mount,) = [mount for mount in container["volumeMounts"] if path.startswith(mount["mountPath"] + "/")]
        assert claims[mount["name"]] in objects_of(overlay("cpu"), "PersistentVolumeClaim"), path


def read_only_keys() -> dict[str, set[str]]:
    from llmos.security.client_keys import CLIENT_KEY_NAME

    return {
        "gateway": {f"{CLIENT_KEY_NAME}.key_secret", "broker.key"},
        "worker": {"worker.key_secret", "broker.key", "kernel.key"},
    }


READ_ONLY_KEYS = read_only_keys()


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_service_gets_the_keyring_from_the_secret(name: str) -> None:
    for deployment_name, deployment in objects_of(overlay(name), "Deployment").items():
        spec = pod_spec(deployment)
        (container,) = spec["containers"]
        assert container_environment(overlay(name), container)["LLMOS_KEYS_DIR"] == KEYS_DIR
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        (mount,) = [mount for mount in container["volumeMounts"] if mount["mountPath"] == KEYS_DIR]
        keys_volume = volumes[mount["name"]]
        if subcommand_of(container) in READ_ONLY_KEYS:
            # the SDK and a worker only read their own key and the servers' public keys,
            # so the Secret mounts as it is, with just those files
            assert keys_volume["secret"]["secretName"] == KEYS_SECRET
            paths = {item["path"] for item in keys_volume["secret"]["items"]}
            assert paths == READ_ONLY_KEYS[subcommand_of(container)], deployment_name
            assert "initContainers" not in spec, deployment_name
            continue
        # A service opens its keyring read-write (a lock file in it); a Secret volume
        # is read-only, so an init container copies the Secret into an emptyDir.
        assert "emptyDir" in keys_volume and not mount.get("readOnly", False), deployment_name
        (copier,) = spec["initContainers"]
        copier_mounts = {mount["name"]: mount["mountPath"] for mount in copier["volumeMounts"]}
        (secret_volume,) = [volume for volume in spec["volumes"] if "secret" in volume]
        assert secret_volume["secret"]["secretName"] == KEYS_SECRET
        source, target = copier_mounts[secret_volume["name"]], copier_mounts[mount["name"]]
        assert f"cp {source}/* {target}/" in " ".join(container_command(copier)), deployment_name


# ---------------------------------------------------------------- autoscaling


def test_keda_scales_the_worker_deployment_on_the_broker_queue() -> None:
    (scaled_object,) = render("autoscaling/keda")
    assert (scaled_object["apiVersion"], scaled_object["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    spec = scaled_object["spec"]
    assert spec["scaleTargetRef"]["name"] in objects_of(overlay("cpu"), "Deployment")
    assert spec["scaleTargetRef"]["name"] == "worker"
    assert spec["minReplicaCount"] >= 1, "no worker at all refuses every request"
    assert spec["maxReplicaCount"] > spec["minReplicaCount"]
    queries = []
    for trigger in spec["triggers"]:
        assert trigger["type"] == "prometheus"
        assert {"serverAddress", "query", "threshold"} <= trigger["metadata"].keys()
        float(trigger["metadata"]["threshold"])
        queries.append(trigger["metadata"]["query"])
    assert queries[0] == "sum(llmos:num_requests_waiting)"
    named = {metric for query in queries for metric in _METRIC_NAME.findall(query)}
    assert named and named <= exported_metrics(), f"metrics no service exports: {named - exported_metrics()}"
    scale_down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert_slow_scale_down(scale_down)


def test_the_hpa_scales_the_worker_deployment_on_the_adapters_queue_metric() -> None:
    (hpa,) = render("autoscaling/hpa")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "worker")
    assert hpa["spec"]["minReplicas"] >= 1
    (metric,) = hpa["spec"]["metrics"]
    name = metric[metric["type"].lower()]["metric"]["name"]
    # the Prometheus adapter renames llmos:x to llmos_x: metric API names have no ':'
    assert name.replace("llmos_", "llmos:", 1) in exported_metrics()
    assert name == "llmos_num_requests_waiting"
    assert_slow_scale_down(hpa["spec"]["behavior"]["scaleDown"])


def assert_slow_scale_down(scale_down: dict[str, Any]) -> None:
    """Workers leave one at a time, after the queue has stayed short for minutes:
    each one drains first, and comes back only at the cost of a model load."""
    assert scale_down["stabilizationWindowSeconds"] >= 300
    assert all(policy["type"] == "Pods" and policy["value"] == 1 for policy in scale_down["policies"])


def test_the_deploy_guide_names_only_directories_that_exist() -> None:
    guide = (REPO_ROOT / "docs" / "deploy.md").read_text()
    named = set(re.findall(r"deploy/k8s/[\w/.-]*\w", guide))
    assert {f"deploy/k8s/overlays/{name}" for name in OVERLAYS} <= named
    missing = sorted(path for path in named if not (REPO_ROOT / path).exists())
    assert not missing, f"docs/deploy.md names {missing}"
