"""Render deploy/k8s overlays the way ``kustomize build`` does, for CI machines without kustomize.

Why hand-written: kustomize is a Go program with no build on PyPI for this project's Python (the
Python bindings, pykustomize, need Python 3.14), and CI installs from PyPI only. So the overlays
keep to a small subset of Kustomization fields, rendered here with the same semantics, and
anything outside it is an error rather than silently ignored:

* ``resources``: YAML files (several documents each) and folders holding a ``kustomization.yaml``;
* ``namespace``: set on every namespaced resource (not on Namespace or other cluster-wide kinds);
* ``images``: ``newName`` / ``newTag`` / ``digest`` of matching container images in pod templates;
* ``patches``: JSON 6902 operations (inline ``patch`` or ``path``) on a ``target`` selected by
  ``kind`` / ``name`` / ``group`` / ``version``, applied by the ``jsonpatch`` library (RFC 6902,
  ``test`` ops included).

``tests/deploy/test_k8s.py`` checks that this render equals the real ``kubectl kustomize`` where one
is installed, so the subset cannot drift from kustomize unnoticed.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

Resource = dict[str, Any]

KUSTOMIZATION = "kustomization.yaml"
SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
# Kinds without a namespace (the ones a kustomization here could hold; kustomize knows them all).
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "IngressClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
}
POD_SPEC_PATHS = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
_IMAGE = re.compile(r"^(?P<name>[^@]+?)(?::(?P<tag>[^:/@]+))?(?:@(?P<digest>.+))?$")


class KustomizeError(ValueError):
    """The kustomization uses something outside the supported subset, or a patch does not apply."""


def load_documents(path: Path) -> list[Resource]:
    """Every non-empty YAML document of ``path``."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _kustomization(folder: Path) -> dict[str, Any]:
    file = folder / KUSTOMIZATION
    if not file.is_file():
        raise KustomizeError(f"{folder}: no {KUSTOMIZATION}")
    k = yaml.safe_load(file.read_text()) or {}
    unknown = set(k) - SUPPORTED
    if unknown:
        raise KustomizeError(f"{file}: fields outside the supported subset: {sorted(unknown)}")
    if k.get("kind", "Kustomization") != "Kustomization":
        raise KustomizeError(f"{file}: kind must be Kustomization")
    return k


def _group_version(resource: Resource) -> tuple[str, str]:
    group, _, version = resource.get("apiVersion", "").rpartition("/")
    return group, version


def _matches(resource: Resource, target: dict[str, Any]) -> bool:
    unknown = set(target) - {"kind", "name", "group", "version"}
    if unknown:
        raise KustomizeError(f"patch target fields outside the supported subset: {sorted(unknown)}")
    group, version = _group_version(resource)
    return (
        target.get("kind", resource.get("kind")) == resource.get("kind")
        and target.get("name", resource["metadata"]["name"]) == resource["metadata"]["name"]
        and target.get("group", group) == group
        and target.get("version", version) == version
    )


def _apply_patch(resources: list[Resource], patch: dict[str, Any], folder: Path) -> list[Resource]:
    unknown = set(patch) - {"patch", "path", "target"}
    if unknown or "target" not in patch or ("patch" in patch) == ("path" in patch):
        raise KustomizeError(f"{folder}: each patch needs a target and one of patch/path (JSON 6902 only)")
    text = patch["patch"] if "patch" in patch else (folder / patch["path"]).read_text()
    ops = yaml.safe_load(text)
    if not isinstance(ops, list):
        raise KustomizeError(f"{folder}: only JSON 6902 patches (a list of operations) are supported")
    hits = [r for r in resources if _matches(r, patch["target"])]
    if not hits:
        raise KustomizeError(f"{folder}: patch target {patch['target']} matches no resource")
    out = []
    for r in resources:
        if r in hits:
            try:
                r = jsonpatch.apply_patch(r, ops)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
                raise KustomizeError(f"{folder}: patch on {r['kind']}/{r['metadata']['name']}: {e}") from e
        out.append(r)
    return out


def _set_images(resource: Resource, images: list[dict[str, Any]]) -> None:
    path = POD_SPEC_PATHS.get(resource.get("kind", ""))
    if path is None:
        return
    spec: Any = resource
    for key in path:
        spec = spec.get(key) if isinstance(spec, dict) else None
    if not isinstance(spec, dict):
        return
    for container in spec.get("initContainers", []) + spec.get("containers", []):
        m = _IMAGE.match(container.get("image", ""))
        if not m:
            continue
        for image in images:
            unknown = set(image) - {"name", "newName", "newTag", "digest"}
            if unknown:
                raise KustomizeError(f"images fields outside the supported subset: {sorted(unknown)}")
            if image["name"] != m.group("name"):
                continue
            name = image.get("newName", m.group("name"))
            if "digest" in image:
                container["image"] = f"{name}@{image['digest']}"
            elif "newTag" in image:
                container["image"] = f"{name}:{image['newTag']}"
            else:
                tail = f":{m.group('tag')}" if m.group("tag") else ""
                tail += f"@{m.group('digest')}" if m.group("digest") else ""
                container["image"] = name + tail


def build(folder: Path) -> list[Resource]:
    """``kustomize build folder``: the rendered resources (order: resources as listed, depth first)."""
    folder = Path(folder)
    k = _kustomization(folder)
    resources: list[Resource] = []
    for entry in k.get("resources", []):
        path = (folder / entry).resolve()
        if path.is_dir():
            resources += build(path)
        elif path.is_file():
            resources += load_documents(path)
        else:
            raise KustomizeError(f"{folder}: resource {entry} not found")
    resources = copy.deepcopy(resources)
    seen: set[tuple[str, str, str | None]] = set()
    for r in resources:
        key = (r.get("kind", ""), r["metadata"]["name"], r["metadata"].get("namespace"))
        if key in seen:
            raise KustomizeError(f"{folder}: {key} defined twice")
        seen.add(key)
    for patch in k.get("patches", []):
        resources = _apply_patch(resources, patch, folder)
    if images := k.get("images"):
        for r in resources:
            _set_images(r, images)
    if namespace := k.get("namespace"):
        for r in resources:
            if r.get("kind") not in CLUSTER_SCOPED:
                r["metadata"]["namespace"] = namespace
    return resources


def index(resources: list[Resource]) -> dict[tuple[str, str, str], Resource]:
    """Resources by (kind, namespace, name): kustomize orders its output by kind, so compare this."""
    return {(r["kind"], r["metadata"].get("namespace", ""), r["metadata"]["name"]): r for r in resources}
