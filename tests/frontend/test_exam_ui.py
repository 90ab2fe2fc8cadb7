"""The exam page: its pure helpers, and the page in AppTest against the real test backend with the samples."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from frontend import exam_view as view
from retina.paths import REPO_ROOT
from tests.support import APP

FUNDUS = REPO_ROOT / "samples/fundus"


def test_helpers_print_what_the_backend_decided() -> None:
    eye = {"n_gradable": 1, "n_images": 2, "deciding_image": 3, "label": "Moderate", "confidence": 0.714}
    assert view.eye_summary(eye) == "1 of 2 images gradable; decided by image 3 (Moderate, 0.71)"
    assert view.eye_summary({"n_gradable": 0, "n_images": 1, "deciding_image": None}) == "0 of 1 images gradable"
    rows = view.image_rows(
        [
            {"index": 0, "filename": "a.jpg", "eye": "right", "laterality_source": "form", "kind": "image"}
            | {"gradable": True, "result": {"label": "No DR", "referral": {"level": "rescreen_12_months"}}},
            {"index": 1, "filename": "b.jpg", "eye": "left", "laterality_source": "filename", "kind": "image"}
            | {"gradable": False, "result": None, "error": {"error": "not_retinal_image", "detail": "x"}},
        ]
    )
    assert [r["referral"] for r in rows] == ["rescreen_12_months", "not_retinal_image"]
    assert view.severity("ungradable") == "warning" and view.severity("urgent") == "error"


@pytest.fixture
def _fresh_caches() -> Iterator[None]:
    st.cache_data.clear()
    yield
    st.cache_data.clear()


@pytest.mark.slow
@pytest.mark.usefixtures("_fresh_caches")
def test_exam_page_answers_per_eye_and_offers_the_pdf(backend_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETINA_BACKEND_URL", backend_url)
    monkeypatch.delenv("RETINA_API_KEY", raising=False)
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    at.switch_page("app_pages/exam.py").run()
    assert not at.exception, [e.value for e in at.exception]
    photos = [FUNDUS / "IDRiD_079-grade1.jpeg", FUNDUS / "IDRiD_138-grade0.jpeg"]
    at.file_uploader(key="exam_uploads").set_value([(p.name, p.read_bytes(), "image/jpeg") for p in photos]).run()
    at.selectbox(key="eye_0").set_value("Right eye (OD)")
    at.selectbox(key="eye_1").set_value("Left eye (OS)")
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert [h.value for h in at.subheader] == ["Right eye (OD)", "Left eye (OS)"]
    shown = [m.value for kind in (at.error, at.warning, at.success, at.info) for m in kind]
    assert any(text.startswith("**Patient: ") for text in shown)
