"""deploy/k8s: every overlay renders, every rendered manifest is valid against the Kubernetes schemas
(kubernetes-validate's bundled copies, strict: no unknown fields; offline), and the manifests say
what the containers really do (ports, probes, env vars the app reads, non-root, secrets by reference).

The render is tests/deploy/kustomize.py; where ``kubectl`` (with its built-in kustomize) or
``kustomize`` is installed, the real render must be identical.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from backend.app.core.config import Settings
from retina.paths import REPO_ROOT
from tests.deploy.kustomize import KustomizeError, build, index
from tests.deploy.parsing import exec_form, one, parse_dockerfile

K8S = REPO_ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
# Oldest Kubernetes still in wide use whose schemas the package bundles, and the newest it bundles.
KUBE_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
SECRET_NAMES = {"retinascope-api-key", "retinascope-audit-db", "retinascope-postgres"}


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, build(K8S / "overlays" / request.param)


def _by_kind(resources: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def test_the_expected_overlays_exist() -> None:
    assert {"dev", "prod"} <= set(OVERLAYS)


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_rendered_manifest_is_valid_for_kubernetes(overlay: tuple[str, list[dict]], version: str) -> None:
    name, resources = overlay
    assert resources, name
    for r in resources:
        try:
            kubernetes_validate.validate(r, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{name}: {r['kind']}/{r['metadata']['name']} invalid for {version}: {e.message} at {e.path}")


def test_validation_rejects_a_broken_manifest() -> None:
    """The check above can fail: an unknown field and a wrong type are both caught."""
    deployment = _by_kind(build(K8S / "overlays" / "prod"), "Deployment", "retinascope-backend")
    _container(deployment)["readinesProbe"] = {"httpGet": {"path": "/ready", "port": "http"}}  # typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[-1], strict=True)
    del _container(deployment)["readinesProbe"]
    deployment["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[-1], strict=True)


def _real_kustomize() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        probe = subprocess.run(["kubectl", "kustomize", "--help"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return ["kubectl", "kustomize"]
    return None


@pytest.mark.parametrize("name", OVERLAYS)
def test_render_equals_real_kustomize(name: str) -> None:
    tool = _real_kustomize()
    if tool is None:
        pytest.skip("neither kustomize nor kubectl is installed (the Python render is checked against them there)")
    done = subprocess.run([*tool, str(K8S / "overlays" / name)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    real = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert index(build(K8S / "overlays" / name)) == index(real)


def test_unsupported_kustomization_fields_are_refused(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\ncommonLabels: {a: b}\n")
    with pytest.raises(KustomizeError, match="commonLabels"):
        build(tmp_path)


def test_a_patch_whose_test_op_fails_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {k: v}\n")
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [cm.yaml]\n"
        "patches:\n"
        "  - target: {kind: ConfigMap, name: a}\n"
        "    patch: |-\n"
        "      - {op: test, path: /data/k, value: other}\n"
    )
    with pytest.raises(KustomizeError, match="ConfigMap/a"):
        build(tmp_path)


# ----------------------------------------------------------------------------- what the containers do


def test_backend_matches_the_image(overlay: tuple[str, list[dict]]) -> None:
    name, resources = overlay
    dockerfile = parse_dockerfile(REPO_ROOT / "Dockerfile.backend")
    cmd = exec_form(one(dockerfile, "CMD").args)
    port = int(cmd[cmd.index("--port") + 1])
    deployment = _by_kind(resources, "Deployment", "retinascope-backend")
    c = _container(deployment)
    assert "command" not in c and "args" not in c, "runs the image's own CMD"
    assert c["image"].split("/")[-1].split(":")[0] in ("retinascope-backend", "backend")
    assert [p["containerPort"] for p in c["ports"]] == [port]
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    user = one(dockerfile, "USER").args.split(":")
    pod = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True and [str(pod["runAsUser"]), str(pod["runAsGroup"])] == user
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {"/tmp"} <= {m["mountPath"] for m in c["volumeMounts"]}
    assert c["resources"]["requests"] and c["resources"]["limits"]
    service = _by_kind(resources, "Service", "retinascope-backend")
    assert service["spec"]["ports"][0]["port"] == port


def test_backend_env_is_what_the_app_reads(overlay: tuple[str, list[dict]]) -> None:
    name, resources = overlay
    env = _env(_container(_by_kind(resources, "Deployment", "retinascope-backend")))
    fields = set(Settings.model_fields)
    for var in env:
        if var.startswith("RETINA_"):
            assert var.removeprefix("RETINA_").lower() in fields, f"{name}: {var} is not a setting"
    # Published beyond the pod, so the app itself insists on the key (Settings refuses to start without it).
    assert env["RETINA_BIND_ADDRESS"]["value"] == "0.0.0.0"
    assert env["RETINA_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "retinascope-api-key"
    # Replicas share one audit database: PostgreSQL through psycopg, never a SQLite file on a pod.
    audit = env["RETINA_AUDIT_DB"]
    if "valueFrom" in audit:
        assert audit["valueFrom"]["secretKeyRef"] == {"name": "retinascope-audit-db", "key": "url"}
    else:
        assert audit["value"].startswith("postgresql+psycopg://")
        for ref in re.findall(r"\$\(([A-Z_]+)\)", audit["value"]):
            names = list(env)
            assert names.index(ref) < names.index("RETINA_AUDIT_DB"), "Kubernetes expands only earlier vars"
            assert "secretKeyRef" in env[ref]["valueFrom"]
    workers, threads = int(env["WEB_CONCURRENCY"]["value"]), int(env["RETINA_TORCH_THREADS"]["value"])
    cpus = float(_container(_by_kind(resources, "Deployment", "retinascope-backend"))["resources"]["limits"]["cpu"])
    assert workers * threads <= cpus, "workers x threads <= the CPU limit (README)"


def test_no_secret_value_is_in_the_manifests(overlay: tuple[str, list[dict]]) -> None:
    name, resources = overlay
    assert not [r for r in resources if r["kind"] == "Secret"], "Secrets are created with kubectl, not committed"
    text = yaml.safe_dump_all(resources)
    assert "RETINA_API_KEY\n  value" not in text
    for r in resources:
        for c in _pod_containers(r):
            for e in c.get("env", []):
                if re.search(r"KEY|PASSWORD|TOKEN|SECRET", e["name"]):
                    assert "valueFrom" in e, f"{name}: {e['name']} must come from a Secret"
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in SECRET_NAMES


def _pod_containers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    if resource["kind"] not in ("Deployment", "StatefulSet"):
        return []
    return resource["spec"]["template"]["spec"]["containers"]


def test_frontend_talks_to_the_backend_service(overlay: tuple[str, list[dict]]) -> None:
    name, resources = overlay
    dockerfile = parse_dockerfile(REPO_ROOT / "Dockerfile.frontend")
    cmd = exec_form(one(dockerfile, "CMD").args)
    port = int(cmd[cmd.index("--server.port") + 1])
    deployment = _by_kind(resources, "Deployment", "retinascope-frontend")
    c = _container(deployment)
    assert [p["containerPort"] for p in c["ports"]] == [port]
    env = _env(c)
    backend = _by_kind(resources, "Service", "retinascope-backend")
    assert (
        env["RETINA_BACKEND_URL"]["value"]
        == f"http://{backend['metadata']['name']}:{backend['spec']['ports'][0]['port']}"
    )
    assert env["RETINA_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "retinascope-api-key"
    assert c["readinessProbe"]["httpGet"]["path"] == "/_stcore/health"
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_autoscaler_budget_and_ingress(overlay: tuple[str, list[dict]]) -> None:
    name, resources = overlay
    hpa = _by_kind(resources, "HorizontalPodAutoscaler", "retinascope-backend")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "retinascope-backend",
    }
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = _by_kind(resources, "PodDisruptionBudget", "retinascope-backend")
    assert 1 <= pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "a drain must be able to proceed"
    labels = _by_kind(resources, "Deployment", "retinascope-backend")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ingresses = [r for r in resources if r["kind"] == "Ingress"]
    assert ingresses
    services = {r["metadata"]["name"]: r for r in resources if r["kind"] == "Service"}
    for ing in ingresses:
        hosts = {h for t in ing["spec"]["tls"] for h in t["hosts"]}
        for rule in ing["spec"]["rules"]:
            assert rule["host"] in hosts, f"{name}: {rule['host']} is served without TLS"
            for path in rule["http"]["paths"]:
                target = path["backend"]["service"]
                assert target["name"] in services
                assert target["port"]["name"] in {p["name"] for p in services[target["name"]]["spec"]["ports"]}
                assert not path["path"].startswith("/metrics"), "/metrics stays inside the cluster"


def test_every_resource_is_in_the_overlays_namespace(overlay: tuple[str, list[dict]]) -> None:
    name, resources = overlay
    (namespace,) = [r for r in resources if r["kind"] == "Namespace"]
    for r in resources:
        if r["kind"] != "Namespace":
            assert r["metadata"]["namespace"] == namespace["metadata"]["name"], f"{name}: {r['kind']}"


def test_dev_runs_postgres_and_prod_does_not() -> None:
    dev, prod = build(K8S / "overlays" / "dev"), build(K8S / "overlays" / "prod")
    postgres = _by_kind(dev, "StatefulSet", "retinascope-postgres")
    c = _container(postgres)
    assert _env(c)["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "retinascope-postgres"
    assert postgres["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    url = _env(_container(_by_kind(dev, "Deployment", "retinascope-backend")))["RETINA_AUDIT_DB"]["value"]
    service = _by_kind(dev, "Service", "retinascope-postgres")
    assert f"@{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/" in url
    assert not [r for r in prod if r["kind"] == "StatefulSet"]
    for c in [_container(d) for d in prod if d["kind"] == "Deployment"]:
        assert not c["image"].endswith(":latest"), "production pins image tags"


def test_models_volume_overlay_mounts_read_only() -> None:
    resources = build(K8S / "overlays" / "prod-models-volume")
    deployment = _by_kind(resources, "Deployment", "retinascope-backend")
    c = _container(deployment)
    assert _env(c)["RETINA_MODELS_DIR"]["value"] == "/models/custom"
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/models/custom"]
    assert mount["readOnly"] is True
    (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    assert volume["persistentVolumeClaim"]["readOnly"] is True
    _by_kind(resources, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
