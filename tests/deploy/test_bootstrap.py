"""scripts/bootstrap.sh says plainly when torch falls back from the CPU index to PyPI's CUDA build."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from retina.paths import REPO_ROOT

# A stand-in venv Python: `pip show torch` finds nothing, the CPU index fails as when it is unreachable
# or lacks the pinned version, every other install succeeds; each pip call is logged.
FAKE_PYTHON = """#!/bin/bash
echo "$*" >>"$(dirname "$0")/../calls.log"
case "$*" in
  *" show "*) exit 1 ;;
  *download.pytorch.org*)
    echo "ERROR: Could not find a version that satisfies the requirement torch==9.9.9" >&2; exit 1 ;;
esac
exit 0
"""


def test_cpu_index_failure_is_explained_and_pypi_is_used(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    py = venv / "bin" / "python"
    py.write_text(FAKE_PYTHON)
    py.chmod(0o755)
    env = {**os.environ, "RETINA_VENV": str(venv)}
    r = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "bootstrap.sh"), "backend"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "CPU wheel index is unreachable or has no torch==" in r.stderr
    assert "Could not find a version" in r.stderr  # pip's own reason, quoted once
    assert "PyPI build instead" in r.stderr and "CUDA" in r.stderr and "also runs on CPU" in r.stderr
    calls = (venv / "calls.log").read_text().splitlines()
    torch_installs = [c for c in calls if " install " in f" {c} " and "torch==" in c]
    assert len(torch_installs) == 2 and "--index-url" not in torch_installs[1]
