"""The layout of ``training/`` is a test, not a hope: stages in one direction, commands at the top, no cycle.

Library layers, lowest first (a module may import its own layer and those below, never above):

    training.config  <  training.data  <  training.evaluate  <  training.fit  <  training.sites, training.ship

``training.evaluate`` sits below ``training.fit`` because the fit stage scores every epoch with
its forward passes, metrics and calibration. Command modules (a ``__main__`` guard, or a
package's ``__main__.py``) may import any library module; no module imports a command, and
only commands use the CLI helpers in ``training.cli``. ``retina`` never imports ``training``.
"""

from __future__ import annotations

import ast
from pathlib import Path

from retina.paths import REPO_ROOT
from tests.test_import_graph import cycles, import_graph

TRAINING = REPO_ROOT / "training"
LAYERS = {"config": 0, "data": 1, "evaluate": 2, "fit": 3, "sites": 4, "ship": 4}
MAX_TOP_LEVEL_MODULES = 10
MAX_LINES = 600


def _path(module: str) -> Path:
    p = REPO_ROOT.joinpath(*module.split("."))
    return p / "__init__.py" if p.is_dir() else p.with_suffix(".py")


def is_command(module: str) -> bool:
    """A module run with ``python -m``: a package's ``__main__`` or one with an ``if __name__ == "__main__"`` guard."""
    if module.endswith(".__main__"):
        return True
    return 'if __name__ == "__main__"' in _path(module).read_text(encoding="utf-8")


def layer(module: str) -> int | None:
    """The library layer of ``training.<stage>...``; ``None`` for the gate (its own island) and top-level modules."""
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_training_stages_import_downwards_only() -> None:
    graph = import_graph("training")
    assert "training.fit.run" in graph["training.fit.pipeline"]  # the graph is really read
    upward = [
        f"{m} -> {d}"
        for m, deps in graph.items()
        if not is_command(m) and layer(m) is not None
        for d in deps
        if layer(d) is not None and layer(d) > layer(m)  # type: ignore[operator]
    ]
    assert upward == []
    assert cycles(graph) == []


def test_nothing_imports_a_command_and_only_commands_use_the_cli_helpers() -> None:
    graph = import_graph("training")
    commands = {m for m in graph if is_command(m)}
    assert {"training.train", "training.cv", "training.evaluate.__main__", "training.site_profile"} <= commands
    assert [f"{m} -> {d}" for m, deps in graph.items() for d in deps if d in commands] == []
    assert [m for m, deps in graph.items() if "training.cli" in deps and m not in commands] == []


def test_retina_never_imports_training() -> None:
    found = []
    for path in sorted((REPO_ROOT / "retina").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "training"]
    assert found == []


def test_top_level_shows_the_stages() -> None:
    modules = sorted(p.name for p in TRAINING.glob("*.py"))
    assert len(modules) <= MAX_TOP_LEVEL_MODULES, modules
    packages = {p.name for p in TRAINING.iterdir() if (p / "__init__.py").is_file()}
    assert {"data", "fit", "evaluate", "ship", "sites", "gate"} <= packages


def test_no_training_module_over_600_lines() -> None:
    long = {
        str(p.relative_to(REPO_ROOT)): n
        for p in sorted(TRAINING.rglob("*.py"))
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}
