"""The deployment files under ``deploy/``, checked against the schemas of what reads them: the
Kubernetes manifest with kubernetes-validate (the API's own schemas, offline), the compose files
with the Compose Specification's schema (check-jsonschema's copy). Neither ran against a real
cluster or Docker daemon here; the images themselves are tested in test_containers.py."""

from __future__ import annotations

import copy

import pytest
import yaml

from tests.conftest import REPO

DEPLOY = REPO / "deploy"
KUBERNETES_VERSION = "1.33"


def manifests() -> list[dict]:
    return list(yaml.safe_load_all((DEPLOY / "kubernetes" / "clipserve.yaml").read_text()))


def test_the_kubernetes_manifest_is_valid_and_wired_together() -> None:
    import kubernetes_validate

    documents = {d["kind"]: d for d in manifests()}
    assert set(documents) == {"PersistentVolumeClaim", "Deployment", "Service", "HorizontalPodAutoscaler"}
    for document in documents.values():
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    broken = copy.deepcopy(documents["Deployment"])
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    with pytest.raises(kubernetes_validate.ValidationError):  # the validator is alive
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)

    pod = documents["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["readOnlyRootFilesystem"]
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/cache", "/tmp"}
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {documents["PersistentVolumeClaim"]["metadata"]["name"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    selector = documents["Deployment"]["spec"]["selector"]["matchLabels"]
    assert documents["Service"]["spec"]["selector"] == selector
    metric = documents["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert metric in _served_metric_names()


def test_the_compose_files_follow_the_compose_specification() -> None:
    from check_jsonschema.cli.main_command import main

    files = [str(DEPLOY / "compose.yaml"), str(DEPLOY / "compose.gpu.yaml")]
    with pytest.raises(SystemExit) as passed:
        main(["--builtin-schema", "vendor.compose-spec", *files])
    assert passed.value.code == 0
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    broken = DEPLOY.parent / ".pytest_cache" / "broken-compose.yaml"
    broken.parent.mkdir(exist_ok=True)
    broken.write_text(yaml.safe_dump({**compose, "services": {"clipserve": {"ports": "51000"}}}))
    with pytest.raises(SystemExit) as refused:  # the schema is alive
        main(["--builtin-schema", "vendor.compose-spec", str(broken)])
    assert refused.value.code != 0

    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["clipserve:51000"]
    mounted = {v.split(":")[1] for v in compose["services"]["grafana"]["volumes"]}
    provisioning = DEPLOY / "grafana" / "provisioning"
    provider = yaml.safe_load((provisioning / "dashboards" / "clipserve.yaml").read_text())
    dashboard_dir = provider["providers"][0]["options"]["path"]
    assert f"{dashboard_dir}/clipserve-dashboard.json" in mounted
    assert (DEPLOY / "grafana" / "clipserve-dashboard.json").is_file()


def _served_metric_names() -> set[str]:
    from clipserve.server.metrics import Metrics

    return {family.name for family in Metrics().registry.collect()}
