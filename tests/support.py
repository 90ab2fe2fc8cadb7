"""Helpers the tests share, in one module (test files import from here, never from a conftest).

* ports and probes: :func:`free_port`, :func:`port_is_free`, :func:`http_status`;
* live servers: :func:`serve` (any command until a URL answers 200), :func:`uvicorn_server` (the API
  on a free loopback port until ``/ready``), :class:`Spawner`/:class:`Server` (processes in their own
  session, stopped as a group);
* checkpoint factories: :func:`save_random_checkpoint` (a registered model with random weights,
  written by the real ``checkpoint.save``) and :func:`copy_gate`;
* the shipped real images: :data:`SAMPLES` and :func:`sample_images` (``samples/``, CC BY 4.0, in every clone).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import requests
import torch

from retina import checkpoint
from retina.gate import GATE_FILE
from retina.labels import OCT_CLASSES
from retina.models import build_model
from retina.paths import DEFAULT_MODELS_DIR, REPO_ROOT
from retina.registry import ModelSpec

VENV_BIN = Path(sys.executable).parent
APP = REPO_ROOT / "frontend" / "app.py"  # the Streamlit entry point

# ----------------------------------------------------------------------------- ports and probes


def port_is_free(port: int, host: str = "0.0.0.0") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url: str, timeout: float = 3.0) -> int:
    """HTTP status of a GET, 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, urllib.error.URLError):
        return 0


# ----------------------------------------------------------------------------- live servers


START_TIMEOUT_S = 90.0


def _log_tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


@contextmanager
def serve(cmd: list[str], env: Mapping[str, str], probe_url: str, log_path: Path) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` until ``probe_url`` answers 200 (bounded wait); stop it afterwards.

    Fails with the process log when it exits early or never becomes healthy.
    """
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=dict(env), stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"{cmd[2:4]} exited with {proc.returncode}:\n{_log_tail(log_path)}")
                try:
                    if requests.get(probe_url, timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"{probe_url} not healthy after {START_TIMEOUT_S:.0f} s:\n{_log_tail(log_path)}")
                time.sleep(0.2)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


@contextmanager
def uvicorn_server(
    env: dict[str, str], log_path: Path, workers: int = 1
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``python -m uvicorn backend.main:app`` on a free loopback port, ready (``/ready`` 200) when yielded.

    ``workers > 1`` adds ``--workers N`` and also waits until every worker has logged
    "Application startup complete" (a 200 from one worker says nothing of the others).
    Yields ``(process, base_url)``; the server is stopped (TERM, then KILL) on exit if still alive.
    """
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "backend.main:app", "--host", "127.0.0.1", "--port", str(port)]
            + (["--workers", str(workers)] if workers > 1 else []),
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 300 * workers  # a safety net: the loop ends once ready
            while True:
                assert proc.poll() is None, log_path.read_text()
                try:
                    started = workers == 1 or log_path.read_text().count("Application startup complete") >= workers
                    if started and httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "server never became ready:\n" + log_path.read_text()
                time.sleep(0.2)
            yield proc, base
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@dataclass
class Server:
    """A process started for a test, its output in ``log``."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, n: int = 40) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        return f"--- last lines of {self.name} ---\n" + "\n".join(lines[-n:])

    def wait_status(self, url: str, want: int = 200, timeout: float = 120.0) -> None:
        """Poll ``url`` until it answers ``want``; fail with the process log if it dies or never does."""
        deadline = time.monotonic() + timeout
        last = 0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.proc.returncode} before {url} answered\n{self.tail()}")
            last = http_status(url)
            if last == want:
                return
            time.sleep(0.5)
        pytest.fail(f"{url} answered {last}, not {want}, within {timeout:.0f} s\n{self.tail()}")

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM the process group, then SIGKILL after ``timeout``; returns the exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode


class Spawner:
    """``spawner(name, argv, env)`` starts a process in its own session (so its whole group can be
    stopped) from the repository root, its output in ``DIR/NAME.log``; :meth:`stop_all` ends them."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Server] = []

    def __call__(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> Server:
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as fh:
            proc = subprocess.Popen(
                list(argv),
                cwd=REPO_ROOT,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = Server(name, proc, log)
        self.started.append(server)
        return server

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()


def caddy_password_hash(caddy: str, password: str) -> str:
    """The bcrypt hash ``caddy hash-password`` makes of ``password`` (what RETINA_BASIC_AUTH_HASH holds)."""
    return subprocess.run(
        [caddy, "hash-password", "--plaintext", password], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()


def backend_predict(url: str, path: Path, model: str) -> dict:
    """The backend's own answer for ``path``: what the UI must show."""
    with open(path, "rb") as f:
        resp = requests.post(f"{url}/predict", params={"model": model}, files={"file": (path.name, f)}, timeout=60)
    resp.raise_for_status()
    return resp.json()


# ----------------------------------------------------------------------------- checkpoint factories


def save_random_checkpoint(spec: ModelSpec, path: Path, seed: int = 0) -> Path:
    """A checkpoint of ``spec`` with *random* weights, written by the real save().

    For tests only: it exercises loading, validation and the API, never accuracy.
    Freshly initialised networks with batch norm in eval mode (running stats 0/1) can
    collapse to a constant output (MobileNetV3 does), which would make "equals the offline
    model" tests pass vacuously; a few train-mode passes on noise give the BN layers real
    statistics while the weights stay random.
    """
    torch.manual_seed(seed)
    args = {"in_channels": spec.preprocess.channels, "num_classes": len(spec.class_names)}
    model = build_model(spec.arch, **args)
    size, channels = spec.preprocess.size, spec.preprocess.channels
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: the stats are exactly those of the passes below
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, channels, size, size))
    model.eval()
    for bn in bns:
        bn.momentum = 0.1
    return checkpoint.save(
        path,
        model,
        arch=spec.arch,
        model_args=args,
        task=spec.task,
        class_names=list(spec.class_names),
        preprocess=spec.preprocess,
        label_scheme="grade" if spec.task == "fundus" else None,
        metrics={"note": "random weights for tests"},
        version="0.0.0-test",
    )


def copy_gate(models_dir: Path) -> Path:
    """Put the shipped image gate (models/image-gate.pt) beside test checkpoints, as in models/."""
    return Path(shutil.copy(DEFAULT_MODELS_DIR / GATE_FILE, models_dir / GATE_FILE))


# ----------------------------------------------------------------------------- shipped sample images

SAMPLES = REPO_ROOT / "samples"  # real CC BY 4.0 images shipped in the repository (samples/ATTRIBUTION.md)


def sample_images(kind: str) -> list[Path]:
    """The shipped JPEGs of ``kind`` (``"oct"`` or ``"fundus"``), in an order tests can rely on.

    OCT: one B-scan per class first (in ``OCT_CLASSES`` order), then the rest by name: 8 Kermany scans,
    2 per class, each from another patient. Fundus: by name: 10 IDRiD photos, 2 per DR grade, each one the
    shipped gate accepts as gradable (``scripts/make_samples.py``).
    """
    files = sorted((SAMPLES / kind).glob("*.jpeg"))
    if kind == "oct":
        first = [next(f for f in files if f.name.startswith(f"{c}-")) for c in OCT_CLASSES]
        files = first + [f for f in files if f not in first]
    assert files, f"no {kind} images in {SAMPLES}"
    return files
