"""No function in ``backend/`` or ``training/`` grows past ~80 lines (issue 14: no god-functions).

A long function is where loaders, model building, resume logic and the epoch loop end up
tangled (``training.fit.fit``, now ``training.fit.run.fit``, was 274 lines); this keeps the split
from regressing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 80


def long_functions(package: str, limit: int = MAX_LINES, root: Path = ROOT) -> list[str]:
    """``path::name (N lines)`` for every (async) function or method of ``package`` over ``limit`` lines."""
    found = []
    for path in sorted((root / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1  # decorators excluded, docstring included
                if n > limit:
                    found.append(f"{path.relative_to(root).as_posix()}::{node.name} ({n} lines)")
    return found


@pytest.mark.parametrize("package", ["backend", "training", "scoring"])
def test_no_function_over_80_lines(package):
    assert long_functions(package) == []


def test_the_scan_finds_a_long_function(tmp_path):
    # The check must be able to fail: a generated 90-line function is reported.
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(90))
    (pkg / "m.py").write_text(f"def big():\n{body}\n\n\ndef small():\n    return 1\n")
    assert long_functions("pkg", root=tmp_path) == ["pkg/m.py::big (91 lines)"]
