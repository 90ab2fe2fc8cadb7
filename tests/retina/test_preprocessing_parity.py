"""The faster fundus preprocessing gives exactly what the shipped fundus model was trained on.

``tests/retina/legacy_preprocessing.py`` is the implementation that built the training cache
of fundus-resnet18 v2.0 (PIL's O(k^2) MinFilter, a fresh circle mask per call). The current
``retina.preprocessing.prepare`` (OpenCV erosion, cached mask, one-pass moments) must give
the same bytes on real photos of every source the model serves: raw EyePACS photos, the
publisher's 256-px crops, and IDRiD's other camera. The cost is timed by
``benchmarks/serve_benchmark.py --stages``, not here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retina.preprocessing import decode_image, get_preset, prepare
from tests.retina.legacy_preprocessing import prepare_fundus, prepare_oct_band


def _photos(root: Path, pattern: str, n: int) -> list[Path]:
    files = sorted(root.glob(pattern))
    if not files:
        pytest.skip(f"no photos {pattern} under {root}")
    return files[:: max(1, len(files) // n)][:n]


@pytest.mark.data
@pytest.mark.parametrize("size", [256, 384])
@pytest.mark.parametrize(
    "source,pattern",
    [("fundus-dev", "**/*.jpeg"), ("fundus-train", "**/*.jpeg"), ("fundus-idrid", "**/*.jp*g")],
)
def test_fast_fundus_prepare_equals_the_trained_one(fundus_dev: Path, source: str, pattern: str, size: int) -> None:
    spec = get_preset(f"fundus_{size}")
    root = fundus_dev.parent / source
    if not root.is_dir():
        pytest.skip(f"{root} absent")
    for f in _photos(root, pattern, 8):
        img = decode_image(f.read_bytes())
        new = np.asarray(prepare(img, spec))
        old = np.asarray(prepare_fundus(img, spec))
        assert new.shape == old.shape == (size, size, 3)
        np.testing.assert_array_equal(new, old, err_msg=f"{f.name}: differs from the trained preprocessing")


def test_fast_fundus_prepare_equals_the_trained_one_on_synthetic_edge_cases() -> None:
    """Black images, tiny images, a disc touching the border: the masks' edge handling matches too."""
    spec = get_preset("fundus_128")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:300, :400]
    disc = ((yy - 150) ** 2 + (xx - 200) ** 2 < 150**2)[..., None] * rng.integers(20, 200, (300, 400, 3))
    cases = [
        np.zeros((64, 64, 3), np.uint8),
        rng.integers(0, 255, (40, 90, 3), dtype=np.uint8),
        disc.astype(np.uint8),
        np.full((128, 128, 3), 255, np.uint8),
    ]
    for a in cases:
        img = Image.fromarray(a)
        np.testing.assert_array_equal(np.asarray(prepare(img, spec)), np.asarray(prepare_fundus(img, spec)))


@pytest.mark.data
def test_faster_oct_band_equals_the_trained_one(oct_dev: Path) -> None:
    """OpenCV's integer remap instead of numpy's gather: the same bytes on every oct-dev scan."""
    spec = get_preset("oct_band_128")
    files = sorted(oct_dev.glob("**/*.jpeg"))
    assert files
    for f in files:
        img = decode_image(f.read_bytes())
        np.testing.assert_array_equal(np.asarray(prepare(img, spec)), np.asarray(prepare_oct_band(img)), err_msg=f.name)
