"""The Kubernetes manifests in deploy/ agree with the service they run: its health routes,
its settings, its drain timeout and its metric names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from service.app import create_app
from service.metrics import ServiceMetrics
from service.settings import Settings

DEPLOY = Path(__file__).parents[1] / "deploy"


def documents() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> every Kubernetes object in deploy/*.yaml."""
    found = {}
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and "kind" in doc and "metadata" in doc:
                found[doc["kind"], doc["metadata"]["name"]] = doc
    return found


def one(kind: str) -> dict[str, Any]:
    matching = [doc for (k, _), doc in documents().items() if k == kind]
    assert len(matching) == 1, f"deploy/ should hold one {kind}, has {len(matching)}"
    return matching[0]


@pytest.fixture(scope="module")
def container() -> dict[str, Any]:
    (glimpse,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    return glimpse


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"])
    objects = {p.name for p in DEPLOY.glob("*.yaml")
               if p.name not in ("kustomization.yaml", "prometheus-adapter-values.yaml")}
    assert listed == objects


def test_each_worker_holds_one_gpu(container: dict[str, Any]) -> None:
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 1
    assert container["args"][container["args"].index("--workers") + 1] == "1"


def test_the_environment_is_valid_glimpse_settings(container: dict[str, Any],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    env = env_of(container)
    known = {f"GLIMPSE_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= known, f"unknown settings {set(env) - known}"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert "CUDAExecutionProvider" in settings.providers


def test_probes_use_the_health_routes(container: dict[str, Any]) -> None:
    app = TestClient(create_app(Settings()))  # no lifespan: loading, so ready is 503
    probes = {kind: container[kind]["httpGet"] for kind in
              ("readinessProbe", "livenessProbe", "startupProbe")}
    assert probes["readinessProbe"]["path"] == "/v2/health/ready"
    assert probes["livenessProbe"]["path"] == "/v2/health/live"
    assert probes["startupProbe"]["path"] == "/v2/health/live"
    (port,) = container["ports"]
    for probe in probes.values():
        assert app.get(probe["path"]).status_code in (200, 503), probe["path"]
        assert probe["port"] in (port["name"], port["containerPort"])
    args = container["args"]
    assert int(args[args.index("--port") + 1]) == port["containerPort"]


def test_the_grace_period_covers_the_pre_stop_wait_and_the_drain(container: dict[str, Any]
                                                                 ) -> None:
    pod = one("Deployment")["spec"]["template"]["spec"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    drain = float(env_of(container).get("GLIMPSE_DRAIN_TIMEOUT_S",
                                        Settings.model_fields["drain_timeout_s"].default))
    assert pod["terminationGracePeriodSeconds"] > float(command[1]) + drain


def test_the_model_repository_is_a_volume(container: dict[str, Any]) -> None:
    pod = one("Deployment")["spec"]["template"]["spec"]
    repository = env_of(container)["GLIMPSE_MODEL_REPOSITORY"]
    args = container["args"]
    assert args[args.index("--repository") + 1] == repository
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == repository]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert ("PersistentVolumeClaim", claim) in documents()


def test_the_service_selects_the_workers() -> None:
    deployment, service = one("Deployment"), one("Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    (container_port,) = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert port["targetPort"] in (container_port["name"], container_port["containerPort"])


def test_prometheus_scrapes_the_metrics_route(container: dict[str, Any]) -> None:
    annotations = one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == container["ports"][0]["containerPort"]


def test_the_autoscaler_scales_on_a_queue_time_the_service_exports() -> None:
    hpa, deployment = one("HorizontalPodAutoscaler"), one("Deployment")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]

    adapter = yaml.safe_load((DEPLOY / "prometheus-adapter-values.yaml").read_text())
    (rule,) = [r for r in adapter["rules"]["custom"] if r["name"]["as"] == name]
    metrics = ServiceMetrics()
    metrics.batch_done("m", 1, [0.01], 0.02)
    exported = {line.split("{")[0] for line in metrics.render().decode().splitlines()
                if line and not line.startswith("#")}
    queried = set(re.findall(r"glimpse_\w+", rule["seriesQuery"] + rule["metricsQuery"]))
    assert queried and queried <= exported
    assert all(q.startswith("glimpse_queue_seconds") for q in queried)
