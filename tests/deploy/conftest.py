"""Fixtures for the deployment tests: the parsed Dockerfiles and compose file, and real server processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retina.paths import REPO_ROOT
from tests.deploy.parsing import Instruction, load_compose, parse_dockerfile
from tests.support import Spawner


@pytest.fixture(scope="session")
def backend_dockerfile() -> list[Instruction]:
    return parse_dockerfile(REPO_ROOT / "Dockerfile.backend")


@pytest.fixture(scope="session")
def frontend_dockerfile() -> list[Instruction]:
    return parse_dockerfile(REPO_ROOT / "Dockerfile.frontend")


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    """docker-compose.yml as `docker compose up` sees it with no variable set (every default)."""
    return load_compose(REPO_ROOT / "docker-compose.yml")


# ----------------------------------------------------------------------------- processes


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawner]:
    """Processes stopped at the end of the test."""
    spawner = Spawner(tmp_path)
    yield spawner
    spawner.stop_all()


@pytest.fixture(scope="module")
def spawn_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Spawner]:
    """Processes shared by a module's tests, stopped at the end of the module."""
    spawner = Spawner(tmp_path_factory.mktemp("servers"))
    yield spawner
    spawner.stop_all()
