"""collector-config/: the Collector configs, Kubernetes manifests and Dockerfile agree with the
receiver and name only components that exist.

These are the structural checks; test_e2e_collector.py and test_e2e_gateway.py run the configs
with a Collector built from builder-config.yaml.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from lightning_otlp.cli import build_parser
from lightning_otlp.configfile import check_config
from lightning_otlp.defaults import DEFAULT_MAX_REQUEST_BYTES
from lightning_otlp.settings import SPECS, Address, Settings

from .support import ROOT

CONFIG_DIR = ROOT / "collector-config"
MIB = 1024 * 1024

# Component types the configs may use, checked against the otelcol-contrib v0.136.0 build
# manifest (opentelemetry-collector-releases, distributions/otelcol-contrib/manifest.yaml) and
# the components' own sources. Since v0.144.0 the `otlp` exporter is also named `otlp_grpc`,
# with `otlp` kept as a deprecated alias; `otlp` is used so the configs load in both.
OTELCOL_CONTRIB_RELEASE = "v0.136.0"
COMPONENTS: dict[str, frozenset[str]] = {
    "receivers": frozenset({"otlp"}),  # receiver/otlpreceiver
    "processors": frozenset({"memory_limiter", "batch"}),  # memorylimiterprocessor, batchprocessor
    "connectors": frozenset({"routing"}),  # routingconnector
    "exporters": frozenset({"otlp", "otlp_grpc", "loadbalancing"}),  # otlpexporter, loadbalancing
    "extensions": frozenset({"health_check", "file_storage"}),  # healthcheck, storage/filestorage
}
# The largest span the batch limits allow for: an LLM call with long prompt and completion.
ASSUMED_MAX_SPAN_BYTES = 32 * 1024


def load(name: str) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((CONFIG_DIR / name).read_text()) if d is not None]
    assert docs, f"{name} is empty"
    return docs


def port(endpoint: str) -> int:
    return Address.parse(endpoint.removeprefix("http://").removeprefix("https://"))[1]


def collector_configs() -> dict[str, dict[str, Any]]:
    """Every Collector config: the three files and the one inside the Operator resource."""
    names = ("sidecar.yaml", "gateway.yaml", "gateway-rollout.yaml")
    configs = {name: load(name)[0] for name in names}
    for doc in load("kubernetes/operator-sidecar.yaml"):
        if doc["kind"] == "OpenTelemetryCollector":
            configs["kubernetes/operator-sidecar.yaml"] = doc["spec"]["config"]
    return configs


def component_type(component_id: str) -> str:
    return component_id.split("/", 1)[0]


def test_every_yaml_file_parses() -> None:
    files = sorted(CONFIG_DIR.rglob("*.yaml"))
    assert [f.relative_to(CONFIG_DIR).as_posix() for f in files] == [
        "builder-config.yaml",
        "gateway-rollout.yaml",
        "gateway.yaml",
        "kubernetes/operator-sidecar.yaml",
        "kubernetes/plain-sidecar.yaml",
        "sidecar.yaml",
    ]
    for path in files:
        assert list(yaml.safe_load_all(path.read_text())), path


@pytest.mark.parametrize("name", sorted(collector_configs()))
def test_collector_config_names_only_existing_components(name: str) -> None:
    config = collector_configs()[name]
    for kind, allowed in COMPONENTS.items():
        for component_id in config.get(kind) or {}:
            assert component_type(component_id) in allowed, (
                f"{name}: {kind} {component_id!r} not in otelcol-contrib {OTELCOL_CONTRIB_RELEASE}"
            )
    service = config["service"]
    for extension in service.get("extensions", []):
        assert extension in config["extensions"], f"{name}: extension {extension} not defined"
    for pipeline, spec in service["pipelines"].items():
        assert component_type(pipeline) == "traces"
        for kind in ("receivers", "processors", "exporters"):
            for component_id in spec.get(kind, []):
                defined = {**config[kind], **config.get("connectors", {})}
                assert component_id in defined, f"{name}: {component_id} not defined"
        if component_type(spec["receivers"][0]) == "otlp":
            # memory_limiter first, then (not in a sidecar, see below) batch
            processors = [component_type(p) for p in spec["processors"]]
            assert processors in (["memory_limiter"], ["memory_limiter", "batch"])


@pytest.mark.parametrize("name", sorted(collector_configs()))
def test_collector_limits_fit_the_receiver(name: str) -> None:
    config = collector_configs()[name]
    if "batch" in config["processors"]:
        batch = config["processors"]["batch"]
        assert batch["send_batch_size"] <= batch["send_batch_max_size"]
        most = batch["send_batch_max_size"]
    else:  # batched by the exporter from its queue
        batch = otlp_exporter(config)["sending_queue"]["batch"]
        assert batch["sizer"] == "items" and batch["min_size"] <= batch["max_size"]
        most = batch["max_size"]
    assert most * ASSUMED_MAX_SPAN_BYTES <= DEFAULT_MAX_REQUEST_BYTES
    protocols = config["receivers"]["otlp"]["protocols"]
    # the Collector takes from agents what the receiver takes from it
    assert protocols["grpc"]["max_recv_msg_size_mib"] * MIB == DEFAULT_MAX_REQUEST_BYTES
    assert protocols["http"]["max_request_body_size"] == DEFAULT_MAX_REQUEST_BYTES
    assert port(protocols["grpc"]["endpoint"]) == 4317
    assert port(protocols["http"]["endpoint"]) == 4318
    assert port(config["extensions"]["health_check"]["endpoint"]) == 13133


def otlp_exporter(config: dict[str, Any]) -> dict[str, Any]:
    (exporter,) = [v for k, v in config["exporters"].items() if component_type(k) == "otlp"]
    return exporter


@pytest.mark.parametrize("name", ["sidecar.yaml", "kubernetes/operator-sidecar.yaml"])
def test_sidecar_queues_on_disk_and_retries(name: str) -> None:
    config = collector_configs()[name]
    # a batch processor would hold acknowledged spans in memory, lost if the Collector crashes
    assert "batch" not in config["processors"]
    exporter = otlp_exporter(config)
    queue = exporter["sending_queue"]
    assert queue["enabled"] is True
    storage = queue["storage"]
    assert component_type(storage) == "file_storage"
    assert storage in config["service"]["extensions"]
    assert config["extensions"][storage]["directory"]
    assert exporter["retry_on_failure"]["enabled"] is True
    assert exporter["tls"]["insecure"] is True  # the receiver's default is plaintext on loopback


def test_sidecar_exports_to_the_receivers_default_port() -> None:
    exporter = otlp_exporter(collector_configs()["sidecar.yaml"])
    match = re.fullmatch(r"\$\{env:LIGHTNING_OTLP_ENDPOINT:-(.+)\}", exporter["endpoint"])
    assert match, exporter["endpoint"]
    defaults = Settings()
    assert port(match.group(1)) == defaults.grpc.port == 4317
    assert defaults.http.port == 4318
    assert defaults.health.port == 13133


def test_shared_store_gateway_balances_by_trace_id_alone() -> None:
    """Receivers on one shared store: any receiver takes any span, so no rollout routing."""
    config = collector_configs()["gateway.yaml"]
    assert "connectors" not in config
    (balancer,) = config["exporters"].values()
    assert balancer["routing_key"] == "traceID"
    assert config["service"]["pipelines"]["traces"]["exporters"] == ["loadbalancing"]
    otlp = balancer["protocol"]["otlp"]
    assert "endpoint" not in otlp  # filled in per backend
    assert otlp["retry_on_failure"]["enabled"] is True
    assert otlp["sending_queue"]["enabled"] is True
    # the same receivers, named the same way, as the rollout-keyed gateway
    rollout = collector_configs()["gateway-rollout.yaml"]["exporters"]["loadbalancing/rollout"]
    assert balancer["resolver"] == rollout["resolver"]


def test_gateway_balances_by_rollout_id_then_trace_id_over_receivers() -> None:
    config = collector_configs()["gateway-rollout.yaml"]
    (route,) = config["connectors"]["routing/rollout"]["table"]
    assert route["context"] == "span" and "agentlightning.rollout_id" in route["condition"]
    by_rollout = config["exporters"]["loadbalancing/rollout"]
    by_trace = config["exporters"]["loadbalancing/trace"]
    assert by_rollout["routing_key"] == "attributes"
    assert by_rollout["routing_attributes"] == ["agentlightning.rollout_id"]
    assert by_trace["routing_key"] == "traceID"
    for balancer in (by_rollout, by_trace):
        assert "endpoint" not in balancer["protocol"]["otlp"]  # filled in per backend
        assert balancer["protocol"]["otlp"]["retry_on_failure"]["enabled"] is True
        assert balancer["protocol"]["otlp"]["sending_queue"]["enabled"] is True
    # the same receivers, in the same order, behind both
    assert by_rollout["resolver"] == by_trace["resolver"]
    hostnames = by_rollout["resolver"]["static"]["hostnames"]
    assert len(hostnames) >= 2
    defaults = [re.fullmatch(r"\$\{env:\w+:-(.+)\}", h) for h in hostnames]
    assert all(defaults), hostnames
    assert {port(m.group(1)) for m in defaults if m} == {Settings().grpc.port}


# -- Kubernetes ------------------------------------------------------------------------------


def receiver_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = [
        c
        for c in deployment["spec"]["template"]["spec"]["containers"]
        if c["name"] == "lightning-otlp"
    ]
    return container


def receiver_args(
    container: dict[str, Any], tmp_path: Path, configmaps: dict[str, Any]
) -> Settings:
    """The settings the container's command line gives, parsed by the receiver's own CLI."""
    args = build_parser().parse_args(container["args"])
    assert args.command == "serve"
    settings = Settings()
    if args.config:
        (name,) = configmaps
        (key,) = configmaps[name]
        assert Path(args.config).name == key
        path = tmp_path / key
        path.write_text(configmaps[name][key])
        values, problems = check_config(path)
        assert problems == []
        settings = settings.with_overrides(values)
    flags = {k: v for k, v in vars(args).items() if k in SPECS and v is not None}
    return settings.with_overrides(flags)


@pytest.mark.parametrize("name", ["operator-sidecar.yaml", "plain-sidecar.yaml"])
def test_kubernetes_manifests_have_required_fields(name: str, tmp_path: Path) -> None:
    docs = load(f"kubernetes/{name}")
    for doc in docs:
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], doc
    by_kind = {doc["kind"]: doc for doc in docs}
    deployment = by_kind["Deployment"]
    assert deployment["apiVersion"] == "apps/v1"
    template = deployment["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pod = template["spec"]
    for container in pod["containers"]:
        assert container["name"] and container["image"], container
    configmaps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    container = receiver_container(deployment)
    settings = receiver_args(container, tmp_path, configmaps)
    ports = {p["containerPort"] for p in container["ports"]}
    assert {settings.grpc.port, settings.http.port} <= ports
    health_host, health_port = settings.health
    assert health_host == "0.0.0.0"  # kubelet probes come from outside the pod's loopback
    assert container["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": health_port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": health_port}
    assert pod["terminationGracePeriodSeconds"] > settings.shutdown_timeout

    # the SQLite file lives on a volume backed by the claim in the same file
    assert settings.store.startswith("sqlite:////")
    db_dir = Path(settings.store.removeprefix("sqlite:///")).parent
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == db_dir]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert (
        volume["persistentVolumeClaim"]["claimName"]
        == by_kind["PersistentVolumeClaim"]["metadata"]["name"]
    )
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"

    agent_env = {
        e["name"]: e["value"] for c in pod["containers"] if c["name"] == "agent" for e in c["env"]
    }
    assert agent_env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://localhost:4317"


def test_operator_sidecar_is_injected_and_forwards_to_the_pods_receiver(tmp_path: Path) -> None:
    docs = load("kubernetes/operator-sidecar.yaml")
    by_kind = {doc["kind"]: doc for doc in docs}
    collector = by_kind["OpenTelemetryCollector"]
    assert collector["apiVersion"] == "opentelemetry.io/v1beta1"
    assert collector["spec"]["mode"] == "sidecar"
    deployment = by_kind["Deployment"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["sidecar.opentelemetry.io/inject"] == collector["metadata"]["name"]
    settings = receiver_args(receiver_container(deployment), tmp_path, {})
    exporter = otlp_exporter(collector["spec"]["config"])
    assert exporter["endpoint"] == str(settings.grpc)  # same pod: loopback, moved off 4317
    # the injected Collector's queue volume exists in the pod
    pod_volumes = {v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert {m["name"] for m in collector["spec"]["volumeMounts"]} <= pod_volumes
    queue_dir = collector["spec"]["config"]["extensions"]["file_storage/queue"]["directory"]
    assert queue_dir in {m["mountPath"] for m in collector["spec"]["volumeMounts"]}


# -- Dockerfile ------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    text = (CONFIG_DIR / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            out.append((instruction.upper(), rest.strip()))
    return out


def test_dockerfile_runs_the_receiver_as_a_non_root_user() -> None:
    steps = dockerfile()
    values: dict[str, list[str]] = {}
    for instruction, rest in steps:
        values.setdefault(instruction, []).append(rest)
    assert re.fullmatch(r"python:3\.1\d-slim", values["FROM"][0])
    assert values["USER"][-1] not in ("root", "0")
    assert sorted(" ".join(values["EXPOSE"]).split()) == ["13133", "4317", "4318"]
    (healthcheck,) = values["HEALTHCHECK"]
    assert "http://127.0.0.1:13133/health" in healthcheck
    # the last USER comes before the command: the server never runs as root
    last_user = max(i for i, (k, _) in enumerate(steps) if k == "USER")
    assert last_user < min(i for i, (k, _) in enumerate(steps) if k in ("ENTRYPOINT", "CMD"))
    entrypoint = json.loads(values["ENTRYPOINT"][0])
    command = json.loads(values["CMD"][0])
    assert entrypoint == ["lightning-otlp"]
    args = build_parser().parse_args(command)
    assert args.command == "serve"
    exposed = {port(a) for a in (args.grpc, args.http, args.health)}
    assert exposed == {4317, 4318, 13133}
    assert args.store.startswith("sqlite:////data/")
    assert "/data" in " ".join(values["VOLUME"])
    assert shlex.split(values["WORKDIR"][-1]) == ["/data"]
