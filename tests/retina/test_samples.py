"""``samples/``: small, attributed, redistributable, and accepted by the shipped image gate."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest
from PIL import Image

from retina.dicom import is_dicom, open_frames
from retina.gate import GATE_FILE, ImageGate
from retina.labels import OCT_CLASSES
from retina.paths import DEFAULT_MODELS_DIR, REPO_ROOT

SAMPLES = REPO_ROOT / "samples"
FILES = sorted(p for p in SAMPLES.rglob("*") if p.is_file() and p.name != "ATTRIBUTION.md")


def _rows() -> dict[str, str]:
    """``file -> label`` from the ATTRIBUTION.md table."""
    text = (SAMPLES / "ATTRIBUTION.md").read_text()
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\| `([^`]+)` \| [^|]+ \| ([^|]+) \|", text, re.M)}


def test_samples_are_small_and_cover_every_class() -> None:
    assert sum(p.stat().st_size for p in FILES) < 3_000_000
    names = [p.name for p in FILES]
    for cls in OCT_CLASSES:
        assert sum(n.startswith(f"{cls}-") and n.endswith(".jpeg") for n in names) >= 2, cls
    for grade in range(5):
        assert sum(n.endswith(f"-grade{grade}.jpeg") for n in names) >= 2, grade
    assert any(n.endswith(".dcm") for n in names)


def test_every_sample_is_attributed_and_from_a_cc_by_source() -> None:
    text = (SAMPLES / "ATTRIBUTION.md").read_text()
    assert "doi:10.17632/rscbjbr9sj.2" in text and "IDRiD" in text and text.count("CC BY 4.0") >= 2
    rows = _rows()
    assert sorted(rows) == sorted(str(p.relative_to(SAMPLES)) for p in FILES)
    # Only Kermany OCT2017 and IDRiD may be redistributed; EyePACS names look like 10_left.jpeg.
    for rel in rows:
        assert re.match(
            r"^(oct/(CNV|DME|DRUSEN|NORMAL)-\d+-(\d+\.(jpeg|dcm)|volume\.dcm)|fundus/IDRiD_\d{3}-grade\d\.jpeg)$", rel
        ), rel


def test_the_volume_sample_is_one_small_multi_frame_file() -> None:
    volumes = [p for p in FILES if p.name.endswith("-volume.dcm")]
    assert len(volumes) == 1 and volumes[0].stat().st_size < 1_000_000
    assert open_frames(volumes[0].read_bytes()).n_frames >= 2


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_the_gate_accepts_each_sample_as_gradable_of_its_modality(path: Path) -> None:
    gate = _gate()
    data = path.read_bytes()
    for img in open_frames(data) if is_dicom(data) else [Image.open(path)]:  # every frame of a volume
        res = gate.assess(img)
        assert res.modality == path.parent.name
        assert res.gradable, res.reasons


@cache
def _gate() -> ImageGate:
    return ImageGate.load(DEFAULT_MODELS_DIR / GATE_FILE)
