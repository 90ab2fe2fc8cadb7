"""The frontend runs in its own image with streamlit, requests, pillow and pandas only: no torch, no core."""

from __future__ import annotations

import ast
import subprocess
import sys

from retina.paths import REPO_ROOT as REPO

FORBIDDEN = ("torch", "torchvision", "retina", "backend", "training", "pytorch_grad_cam")


def test_frontend_modules_import_without_core_packages() -> None:
    code = (
        "import sys\n"
        "import frontend.client, frontend.cache, frontend.components.sidebar, frontend.components.result_card\n"
        "import frontend.components.exam, frontend.components.model_card\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_no_forbidden_imports_in_any_frontend_file() -> None:
    # Pages are exec'd by Streamlit, not imported above: check every file's import statements.
    for path in sorted((REPO / "frontend").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            else:
                continue
            assert not [n for n in names if n.split(".")[0] in FORBIDDEN], f"{path}: imports {names}"


def test_only_client_does_http() -> None:
    for path in sorted((REPO / "frontend").rglob("*.py")):
        if path.name == "client.py":
            continue
        text = path.read_text()
        assert "import requests" not in text and "import httpx" not in text and "urllib.request" not in text, path
