"""Shared fixtures: real-data location, tiny checkpoints saved with the real save()."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from retina.paths import data_dir
from retina.registry import MODELS, ModelSpec
from tests.support import copy_gate, save_random_checkpoint

DATA = data_dir()
# Fixtures that read ../shared/data: every test that uses one, even through another fixture, is marked ``data``.
REAL_DATA_FIXTURES = frozenset({"oct_dev", "fundus_dev", "fundus_train"})

# Apps and servers started by tests run the forward pass on torch unless a test asks for another
# engine (tests/unit/test_engine.py, tests/api/test_engine_api.py): exporting every throwaway
# random checkpoint to ONNX would add seconds to each of the hundreds of apps the suite builds.
os.environ.setdefault("RETINA_ENGINE", "torch")
os.environ.setdefault("RETINA_ENGINE_CACHE", tempfile.mkdtemp(prefix="retina-test-engines-"))


@pytest.hookimpl(tryfirst=True)  # before -m selects: the marker must be there when "not data" is evaluated
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``data`` every test whose fixture closure holds one of :data:`REAL_DATA_FIXTURES`.

    Tests that ask for a data set at run time (``request.getfixturevalue``) carry the marker themselves.
    """
    for item in items:
        if REAL_DATA_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.data)


def _need(sub: str) -> Path:
    p = DATA / sub
    if not p.is_dir():
        pytest.skip(f"real data {p} absent (set RETINA_DATA_DIR or place ../shared/data)")
    return p


@pytest.fixture(scope="session")
def oct_dev() -> Path:
    """``../shared/data/oct-dev`` (OCT2017 layout + labels.csv); skips when absent."""
    return _need("oct-dev")


@pytest.fixture(scope="session")
def fundus_dev() -> Path:
    """``../shared/data/fundus-dev`` (EyePACS layout); skips when absent."""
    return _need("fundus-dev")


@pytest.fixture(scope="session")
def fundus_train() -> Path:
    return _need("fundus-train")


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir holding every registered model with random weights (session-scoped)."""
    d = tmp_path_factory.mktemp("models")
    for spec in MODELS.values():
        save_random_checkpoint(spec, d / spec.checkpoint)
    copy_gate(d)
    return d


@pytest.fixture
def make_checkpoint() -> Callable[[ModelSpec, Path], Path]:
    return save_random_checkpoint
