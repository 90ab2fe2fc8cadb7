"""The core has no import cycle and the service's layers import in one direction (read from the source)."""

from __future__ import annotations

import ast
from pathlib import Path

from retina.paths import REPO_ROOT


def _module(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: str) -> dict[str, set[str]]:
    """``module -> modules of the same package it imports``, counting imports inside functions too."""
    files = {_module(p): p for p in sorted((REPO_ROOT / package).rglob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # ``from retina import checkpoint`` imports the submodule; ``from retina.x import y`` module x.
                targets = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module for a in node.names
                ]
            else:
                continue
            graph[name] |= {t for t in targets if t in files and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle found by depth-first search (each reported once, from its smallest module)."""
    found: set[tuple[str, ...]] = set()

    def visit(start: str, node: str, path: list[str]) -> None:
        for nxt in graph[node]:
            if nxt == start:
                found.add(tuple(path))
            elif nxt > start and nxt not in path:
                visit(start, nxt, [*path, nxt])

    for start in sorted(graph):
        visit(start, start, [start])
    return [list(c) for c in sorted(found)]


def test_import_graph_finds_a_cycle_when_there_is_one() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_retina_has_no_import_cycle() -> None:
    graph = import_graph("retina")
    assert "retina.dicom" in graph["retina.decode"]  # the graph is really read
    assert cycles(graph) == []


def test_training_has_no_import_cycle() -> None:
    graph = import_graph("training")
    assert "training.fit.pipeline" in graph["training.train"]
    assert cycles(graph) == []


def test_services_import_no_fastapi_and_no_route_imports_another() -> None:
    for path in sorted((REPO_ROOT / "backend/app/services").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not {m for m in names if m.split(".")[0] in ("fastapi", "starlette")}, path.name
    routes = import_graph("backend")
    for name, deps in routes.items():
        if name.startswith("backend.app.api.routes."):
            assert not {d for d in deps if d.startswith("backend.app.api.routes.")}, name


def imported_packages(package: str) -> dict[str, set[str]]:
    """``module -> top-level packages it imports``, counting imports inside functions too."""
    found: dict[str, set[str]] = {}
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[_module(path)] = names
    return found


def test_the_core_imports_neither_the_service_nor_batch_scoring() -> None:
    """``retina`` is the bottom layer: ``backend`` and ``scoring`` import it, never the other way round."""
    upward = {
        m: deps & {"backend", "scoring", "training", "frontend"} for m, deps in imported_packages("retina").items()
    }
    assert {m: d for m, d in upward.items() if d} == {}


def test_scoring_has_no_import_cycle_and_nothing_imports_it() -> None:
    graph = import_graph("scoring")
    assert "scoring.batch" in graph["scoring.cli"]
    assert cycles(graph) == []
    for package in ("retina", "backend", "training", "frontend"):
        assert not [m for m, deps in imported_packages(package).items() if "scoring" in deps], package


def test_the_api_contract_depends_on_no_service() -> None:
    """Routes -> services -> schemas / retina, never schemas -> services (type-checking imports included)."""
    graph = import_graph("backend")
    contract = [m for m in graph if m.startswith("backend.app.") and m.endswith("schemas")]
    assert {"backend.app.schemas", "backend.app.exam_schemas", "backend.app.audit_schemas"} <= set(contract)
    for name in contract:
        assert not {d for d in graph[name] if d.startswith(("backend.app.services", "backend.app.api"))}, name


def _project_modules() -> list[str]:
    packages = ("retina", "training", "backend", "scoring")
    return [m for pkg in packages for m in sorted(import_graph(pkg)) if m != f"{pkg}.__main__"]


def test_every_module_imports() -> None:
    """Each module of the core, the trainers and the service imports: a name moved by a refactor
    (``training.ship.quantize`` once imported ``setup_logging`` from where it no longer lived) fails here,
    not on the first user who runs that command. In a subprocess: importing ``backend.main`` sets
    process-wide defaults (``OMP_WAIT_POLICY``, ``TQDM_DISABLE``) that must not leak into other tests."""
    import json
    import subprocess
    import sys

    modules = _project_modules()
    assert "training.ship.quantize" in modules and "backend.main" in modules
    script = (
        "import importlib, json, sys\n"
        "failures = {}\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as e:\n"
        "        failures[name] = f'{type(e).__name__}: {e}'\n"
        "print(json.dumps(failures))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, *modules], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {}
