"""The exam page in AppTest against the real test backend with the repo's sample photos (its lines are tested
in ``test_text.py`` and ``test_tables.py``, the backend's words on the scripted backend in ``test_ui.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from retina.paths import REPO_ROOT
from tests.support import APP

FUNDUS = REPO_ROOT / "samples/fundus"


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
    assert any(text.startswith("**Patient:") for text in shown)
