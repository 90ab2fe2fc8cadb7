"""Every ``curl`` example in README.md and docs/api.md, run verbatim by bash against a live server (shipped models).

The server is ``uvicorn backend.main:app`` with the models in ``models/`` and nothing from ``../shared``:
the examples use ``samples/`` only, so they work from a fresh clone. Only the host is changed (the test's
free port instead of ``localhost:8000``). A ``curl`` shell function adds ``--fail-with-body`` (an HTTP
error fails the example) and the ``X-API-Key`` header that the README says to add when a key is set (the
server has one, so ``/audit`` answers too).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from retina.paths import REPO_ROOT
from tests.support import uvicorn_server

pytestmark = pytest.mark.slow

# The README's ten lines and the full list in docs/api.md: every example a newcomer copies must run.
DOCS = (REPO_ROOT / "README.md", REPO_ROOT / "docs" / "api.md")
KEY = "readme-example-key"


def readme_curl_examples() -> list[str]:
    """Each ``curl`` command of the README's and docs/api.md's ``bash`` blocks, continuation lines joined."""
    blocks = [b for doc in DOCS for b in re.findall(r"^```bash\n(.*?)^```", doc.read_text(), flags=re.S | re.M)]
    commands: list[str] = []
    for block in blocks:
        text = block.replace("\\\n", " ")
        commands += [line.strip() for line in text.splitlines() if line.strip().startswith("curl ")]
    return commands


def test_readme_has_the_examples_and_they_use_only_samples() -> None:
    commands = readme_curl_examples()
    assert len(commands) >= 12
    for cmd in commands:
        assert "shared/data" not in cmd
        for path in re.findall(r"=@(\S+)", cmd):
            assert path.startswith("samples/") and (REPO_ROOT / path).is_file(), cmd


def test_every_readme_curl_example_works_on_a_live_server(tmp_path: Path) -> None:
    commands = readme_curl_examples()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETINA_")}
    env |= {
        "RETINA_API_KEY": KEY,
        "RETINA_OPERATOR_KEY": "readme-operator-key",  # the audit example reads /audit with it
        "RETINA_DEVICE": "cpu",
        "RETINA_TORCH_THREADS": "1",
        "RETINA_DECODE_THREADS": "1",
        "RETINA_AUDIT_DB": f"sqlite:///{tmp_path}/audit.sqlite",
        # A fresh clone has no ../shared: nothing may depend on it.
        "RETINA_DATA_DIR": str(tmp_path / "no-shared-data"),
    }
    # Outputs (-o cam.png) land in a scratch dir; samples/ is reached as in the repository root.
    work = tmp_path / "work"
    work.mkdir()
    (work / "samples").symlink_to(REPO_ROOT / "samples")
    with uvicorn_server(env, tmp_path / "server.log") as (_proc, base):
        shell_env = {**env, "API": base}
        # The client key on every call, unless the example sends its own (the operator's, for /audit).
        prelude = (
            'curl() { case "$*" in *X-API-Key*) command curl --fail-with-body -sS "$@" ;; '
            '*) command curl --fail-with-body -sS -H "X-API-Key: $RETINA_API_KEY" "$@" ;; esac; }\n'
        )
        for cmd in commands:
            line = cmd.replace("http://localhost:8000", base).replace("localhost:8000", base)
            r = subprocess.run(
                ["bash", "-c", prelude + line],
                cwd=work,
                env=shell_env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert r.returncode == 0, f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
            if "-o " not in cmd and "/metrics" not in cmd and "-i " not in cmd:
                assert r.stdout.lstrip().startswith(("{", "[")), (cmd, r.stdout[:300])
    assert (work / "cam.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (work / "report.pdf").read_bytes()[:5] == b"%PDF-"
