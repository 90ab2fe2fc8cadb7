"""The shipped image gate (models/image-gate.json) on real retinal and non-retinal images and degraded copies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from retina.gate import FEATURES, GATE_FILE, ImageGate, measure
from retina.paths import DEFAULT_MODELS_DIR
from retina.preprocessing import load_image

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def gate() -> ImageGate:
    return ImageGate.load(DEFAULT_MODELS_DIR / GATE_FILE)


def _open(path: Path) -> Image.Image:
    return load_image(path)


@pytest.mark.data
def test_every_oct_dev_scan_is_a_gradable_oct(gate: ImageGate, oct_dev: Path) -> None:
    files = sorted(oct_dev.glob("train/*/*.jpeg"))
    assert files
    verdicts = {f.name: gate.assess(_open(f)) for f in files}
    wrong = {n: (v.modality, v.reasons) for n, v in verdicts.items() if v.modality != "oct" or not v.gradable}
    assert not wrong


@pytest.mark.data
def test_every_fundus_dev_photo_is_a_gradable_fundus(gate: ImageGate, fundus_dev: Path) -> None:
    # fundus-dev was never fitted on: these are held-out raw camera photos.
    files = sorted(fundus_dev.glob("train/*.jpeg"))
    assert files
    wrong = {}
    for f in files:
        v = gate.assess(_open(f))
        if v.modality != "fundus" or not v.gradable:
            wrong[f.name] = (v.modality, v.reasons)
    assert not wrong


@pytest.mark.parametrize(
    "name", ["astronaut", "camera", "chelsea", "coffee", "coins", "moon", "page", "rocket", "text", "brick"]
)
def test_non_retinal_photographs_are_refused(gate: ImageGate, name: str) -> None:
    img = Image.fromarray(getattr(skimage_data, name)())
    v = gate.assess(img)
    assert v.modality == "other", (name, v.distances)
    assert not v.gradable and v.reasons


def _sklearn_photo(name: str) -> Image.Image:
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image(name))


def test_sklearn_flower_photo_is_refused(gate: ImageGate) -> None:
    assert gate.assess(_sklearn_photo("flower.jpg")).modality == "other"


@pytest.mark.xfail(
    strict=True,
    reason="known false acceptance (see the gate report): china.jpg lies at 0.72 of the threshold of the "
    "publisher-normalised fundus crops, whose colour-flattened look spans ordinary photos",
)
def test_sklearn_china_photo_is_refused(gate: ImageGate) -> None:
    assert gate.assess(_sklearn_photo("china.jpg")).modality == "other"


def test_skimage_retina_is_a_fundus_photo(gate: ImageGate) -> None:
    # A fundus photo from another source than EyePACS, never fitted on.
    v = gate.assess(Image.fromarray(skimage_data.retina()))
    assert v.modality == "fundus" and v.gradable, v.reasons


def test_tiny_and_uniform_images_are_refused(gate: ImageGate) -> None:
    assert gate.assess(Image.new("RGB", (20, 20), (200, 80, 40))).modality == "other"
    v = gate.assess(Image.new("L", (512, 496), 0))
    assert not v.gradable


@pytest.mark.data
def test_degraded_fundus_photos_are_flagged_with_a_reason(gate: ImageGate, fundus_dev: Path) -> None:
    img = _open(sorted(fundus_dev.glob("train/*.jpeg"))[0])
    assert gate.assess(img).gradable
    blurred = gate.assess(img.filter(ImageFilter.GaussianBlur(radius=max(img.size) / 40)))
    assert not blurred.gradable
    assert blurred.modality == "other" or any("blur" in r for r in blurred.reasons)
    dark = gate.assess(ImageEnhance.Brightness(img).enhance(0.1))
    assert not dark.gradable


@pytest.mark.data
def test_blank_oct_is_not_gradable(gate: ImageGate, oct_dev: Path) -> None:
    img = _open(sorted(oct_dev.glob("train/*/*.jpeg"))[0])
    flat = Image.new("L", img.size, int(np.asarray(img).mean()))
    assert not gate.assess(flat).gradable


def test_gate_file_round_trips_and_refuses_other_features(gate: ImageGate, tmp_path: Path) -> None:
    path = gate.save(tmp_path / "g.json")
    again = ImageGate.load(path)
    img = Image.fromarray(skimage_data.retina())
    assert again.assess(img).distances == gate.assess(img).distances
    d = json.loads(path.read_text())
    d["features"] = list(FEATURES[:-1])
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="features"):
        ImageGate.load(path)
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError):
        ImageGate.load(path)


def test_gate_records_its_provenance(gate: ImageGate) -> None:
    assert gate.fitted_on.get("sets", {}).get("oct-dev") == 46
    assert "fundus-dev" not in gate.fitted_on.get("sets", {})  # held out


def test_measure_is_invariant_to_grey_vs_rgb_encoding() -> None:
    a = (np.random.default_rng(0).random((200, 300)) * 255).astype(np.uint8)
    f_l, _ = measure(Image.fromarray(a))
    f_rgb, _ = measure(Image.fromarray(a).convert("RGB"))
    assert f_l == pytest.approx(f_rgb)
