"""Shared fixtures: the real data sets (``data``), the shipped sample images, tiny checkpoints (real save()).

Two kinds of real images:

* ``oct_dev``, ``fundus_dev``, ``fundus_train``: the data sets in ``../shared/data`` (``RETINA_DATA_DIR``),
  absent from a fresh clone. A test that takes one of them (directly or through another fixture) is
  marked ``data`` at collection (:func:`pytest_collection_modifyitems`), so ``-m "not data"`` deselects
  it, and skips when the set is absent. Only tests that measure on a whole set use them.
* ``oct_images``, ``oct_image``, ``fundus_image``, ``oct_volume``: files from ``samples/`` (CC BY 4.0,
  shipped in every clone), for tests that need some real images of a kind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from retina.paths import data_dir
from retina.registry import MODELS, ModelSpec
from tests.support import SAMPLES, copy_gate, sample_images, save_random_checkpoint

DATA = data_dir()
# Fixtures that read ../shared/data: every test that uses one, even through another fixture, is marked ``data``.
REAL_DATA_FIXTURES = frozenset({"oct_dev", "fundus_dev", "fundus_train"})

# Apps and servers started by tests run the forward pass on torch unless a test asks for another
# engine (tests/retina/test_engine.py, tests/backend/test_engine_api.py): exporting every throwaway
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
    """``../shared/data/fundus-train`` (EyePACS layout, several sources); skips when absent."""
    return _need("fundus-train")


@pytest.fixture(scope="session")
def oct_images() -> list[Path]:
    """The 8 shipped Kermany OCT B-scans (``samples/oct``), one per class first (see ``sample_images``)."""
    return sample_images("oct")


@pytest.fixture(scope="session")
def oct_image(oct_images: list[Path]) -> Path:
    """One shipped OCT B-scan (CNV), gradable by the shipped gate."""
    return oct_images[0]


@pytest.fixture(scope="session")
def fundus_image() -> Path:
    """A gradable colour fundus photo from the samples (IDRiD, grade 2). The first fundus-dev (EyePACS)
    photo would not do: the gate v2.0's learned quality grade calls it Reject."""
    return SAMPLES / "fundus" / "IDRiD_003-grade2.jpeg"


@pytest.fixture(scope="session")
def oct_volume() -> Path:
    """The shipped OCT volume: 3 Kermany B-scans of one patient as a multi-frame Ophthalmic Tomography DICOM."""
    return SAMPLES / "oct" / "DRUSEN-1237848-volume.dcm"


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
