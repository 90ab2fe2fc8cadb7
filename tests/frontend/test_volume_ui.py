"""An OCT volume in the UI (AppTest against the real backend with tiny random checkpoints).

The upload is the shipped sample volume (``samples/oct/*-volume.dcm``: 3 Kermany B-scans of one patient
as a multi-frame Ophthalmic Tomography DICOM), so the test needs no ``../shared/data``. The page sends
it to ``/predict`` first; the backend's 422 names ``/predict/volume`` and the page asks there.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import streamlit as st
from streamlit.testing.v1 import AppTest

from retina.paths import REPO_ROOT
from tests.frontend.test_app import failures, referral_opening, run_app

pytestmark = pytest.mark.slow

VOLUME = next((REPO_ROOT / "samples" / "oct").glob("*-volume.dcm"))


@pytest.fixture(autouse=True)
def _fresh_caches() -> Iterator[None]:
    st.cache_data.clear()
    yield
    st.cache_data.clear()


def _backend_volume(url: str, path: Path) -> dict:
    with path.open("rb") as f:
        r = requests.post(f"{url}/predict/volume", params={"model": "oct"}, files={"file": (path.name, f)}, timeout=120)
    r.raise_for_status()
    return r.json()


def _upload_volume(at: AppTest) -> AppTest:
    at.file_uploader(key="uploads").set_value([(VOLUME.name, VOLUME.read_bytes(), "application/dicom")]).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_volume_answer_first_then_strip_chart_and_b_scan_slider(
    monkeypatch: pytest.MonkeyPatch, backend_url: str
) -> None:
    expected = _backend_volume(backend_url, VOLUME)
    at = _upload_volume(run_app(monkeypatch, backend_url))
    assert failures(at) == []
    # The volume's answer comes first: its referral alert, then the volume metrics.
    opening = referral_opening(expected["referral"])
    alerts = [a for kind in ("error", "warning", "success", "info") for a in getattr(at.main, kind)]
    referral = [a.value for a in alerts if a.value.startswith(opening)]
    assert len(referral) == 1 and expected["referral"]["advice"] in referral[0]
    assert [m.value for m in at.metric if m.label == "Volume class"] == [expected["label"]]
    summary = [m.value for m in at.markdown if m.value.startswith("**OCT volume**")]
    assert summary and f"{expected['n_frames']} B-scans" in summary[0]
    assert "Deciding B-scans: " + ", ".join(map(str, expected["deciding_frames"])) in summary[0]
    # The slider runs over every B-scan and starts on the first deciding one, whose CAM is shown.
    slider = at.select_slider(key=next(k for k in at.session_state if str(k).startswith("frame-")))
    assert list(slider.options) == [str(i) for i in range(expected["n_frames"])]
    first = expected["deciding_frames"][0]
    assert slider.value == first
    assert any(c.startswith(f"B-scan {first}: gradcam for") for img in at.image for c in img.captions)
    # Volume probabilities, the strip chart along the volume and the shown B-scan's probabilities.
    charts = at.get("vega_lite_chart")
    assert len(charts) == 3
    strip = [c for c in charts if '"B-scan"' in c.proto.spec]
    assert len(strip) == 1, "strip chart of per-B-scan probabilities missing"
    # Another B-scan: its own label and its CAM.
    other = next(i for i in range(expected["n_frames"]) if i != first)
    slider.set_value(other).run()
    assert not at.exception, [e.value for e in at.exception]
    frame = expected["frames"][other]
    assert any(m.value.startswith(f"**B-scan {other}**: {frame['label']}") for m in at.markdown)
    assert any(c.startswith(f"B-scan {other}: gradcam for") for img in at.image for c in img.captions)


def test_volume_pdf_report_of_the_shown_b_scan(monkeypatch: pytest.MonkeyPatch, backend_url: str) -> None:
    at = _upload_volume(run_app(monkeypatch, backend_url))
    make = next(b for b in at.button if b.label == "Create PDF report")
    make.click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert failures(at) == []
    names = [d.proto.label for d in at.get("download_button")]
    assert "Download PDF report" in names
