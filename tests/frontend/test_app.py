"""The Streamlit app run by AppTest against a real backend (tiny random checkpoints) and real scans."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import requests
import streamlit as st
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.element_tree import Error

from frontend import text
from frontend.components.alerts import level_style
from frontend.model_info import ModelInfo
from retina.registry import default_for
from tests.frontend.fake_backend import FakeServer, png_bytes
from tests.support import APP, backend_predict, free_port

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _fresh_caches() -> Iterator[None]:
    # Streamlit's caches are process-wide: keep one test's answers out of the next.
    st.cache_data.clear()
    yield
    st.cache_data.clear()


def run_app(monkeypatch: pytest.MonkeyPatch, url: str) -> AppTest:
    monkeypatch.setenv("RETINA_BACKEND_URL", url)
    monkeypatch.delenv("RETINA_API_KEY", raising=False)
    at = AppTest.from_file(str(APP), default_timeout=90).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def upload(at: AppTest, *paths: Path | tuple[str, bytes]) -> AppTest:
    files = [(p.name, p.read_bytes(), "image/jpeg") if isinstance(p, Path) else (*p, "image/png") for p in paths]
    at.file_uploader(key="uploads").set_value(files).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metric(at: AppTest, label: str) -> list[str]:
    return [m.value for m in at.metric if m.label == label]


def cam_captions(at: AppTest) -> list[str]:
    return [c for img in at.image for c in img.captions if " for " in c and "opacity" in c]


def referral_opening(ref: dict) -> str:
    """How the referral box opens: the backend's headline in bold, or (an older backend without headlines) its
    advice."""
    return f"**{ref['headline']}**" if ref.get("headline") else ref["advice"]


def _errors_outside_referrals(node: Any) -> Iterator[str]:
    for child in getattr(node, "children", {}).values():
        if "-referral-" in str(getattr(getattr(child, "proto", None), "id", "")):
            continue  # a referral box (keyed container ``referral-<upload>``)
        if isinstance(child, Error):
            yield child.value
        yield from _errors_outside_referrals(child)


def failures(at: AppTest) -> list[str]:
    """Error alerts outside the referral boxes, where an urgent referral is shown in ``st.error`` style on
    purpose."""
    return [*_errors_outside_referrals(at.main), *(e.value for e in at.sidebar.error)]


def check_referral(at: AppTest, expected: dict) -> None:
    """The referral the backend answered is on the page, in its colour, with the research-use note.

    A backend without a referral policy for the model (``referral`` null) shows none.
    """
    ref = expected.get("referral")
    if not ref:
        return
    level = ref["level"] if expected.get("gradable", True) else "ungradable"
    style = level_style(level)
    alerts = [a.value for a in getattr(at.main, style) if a.value.startswith(referral_opening(ref))]
    assert len(alerts) == 1, [a.value for a in getattr(at.main, style)]
    assert ref["advice"] in alerts[0]
    assert any(ref["note"] in c.value for c in at.main.caption), "research-use note missing"


def test_sidebar_ready_and_models(monkeypatch: pytest.MonkeyPatch, backend_url: str, backend_models: list) -> None:
    at = run_app(monkeypatch, backend_url)
    assert [s.value for s in at.sidebar.success] == ["Backend ready"]
    assert not at.error
    assert at.sidebar.radio(key="task").options == ["OCT", "Fundus", text.AUTO_LABEL]
    oct_ids = [m["id"] for m in backend_models if m["task"] == "oct"]
    select = at.sidebar.selectbox(key="model-oct")
    assert select.value == default_for("oct").key
    assert len(select.options) == len(oct_ids)
    # Version shown next to the model; metrics table from the checkpoint.
    assert any("0.0.0-test" in o for o in select.options)
    # st.table (wraps), not st.dataframe, which cut long values in the narrow sidebar.
    metrics = at.sidebar.table[0].value
    assert "random weights for tests" in metrics["value"].tolist()
    # The referral thresholds the backend serves for the model, each with its operating point (if any).
    served = ModelInfo.from_json(next(m for m in backend_models if m["id"] == select.value))
    # The backend's operating-point sentences (none from a backend before the issue-28 words), as sent.
    points = text.operating_point_lines(served)
    assert len(points) == len(served.operating_point_text)
    captions = [c.value for c in at.sidebar.caption]
    for lines in points:
        assert any(c.startswith(lines[0]) for c in captions), (lines, captions)
    # The backend's note on a model whose answers carry no advice, printed as it comes.
    warnings = [w.value for w in at.sidebar.warning]
    assert (served.advice_note in warnings) if served.advice_note else not warnings
    # The page's disclaimer is the backend's, and only the backend's.
    words = next((m["disclaimer"] for m in backend_models if m.get("disclaimer")), None)
    assert [i.value for i in at.main.info] == ([words] if words else [])


def test_oct_upload_shows_prediction_and_cam(
    monkeypatch: pytest.MonkeyPatch, backend_url: str, oct_image: Path
) -> None:
    at = upload(run_app(monkeypatch, backend_url), oct_image)
    expected = backend_predict(backend_url, oct_image, default_for("oct").key)
    assert not failures(at), failures(at)
    assert expected.get("gradable", True), "a real dev-set B-scan failed the image gate"
    check_referral(at, expected)
    assert metric(at, "Predicted class") == [expected["label"]]
    assert metric(at, "Confidence") == [f"{expected['confidence']:.1%}"]
    assert cam_captions(at) == [f"gradcam for {expected['label']} (opacity 0.50), as the model sees the image"]
    assert [b.label for b in at.get("download_button")] == ["Download overlay PNG"]
    assert len(at.get("vega_lite_chart")) == 1, "probability chart missing"

    # Other CAM method and target class: a new overlay for that setting, still no error.
    other = next(c for c in default_for("oct").class_names if c != expected["label"])
    at.selectbox(key="cam-method").set_value("eigencam")
    at.slider(key="cam-alpha").set_value(0.8)
    at.toggle(key="cam-full").set_value(True)
    at.selectbox(key=next(k for k in at.session_state if k.startswith("target-"))).set_value(other)
    at.run()
    assert not at.exception and not failures(at)
    assert cam_captions(at) == [f"eigencam for {other} (opacity 0.80), upsampled to the upload"]


def test_fundus_shows_derived_probabilities(
    monkeypatch: pytest.MonkeyPatch, backend_url: str, fundus_image: Path
) -> None:
    at = run_app(monkeypatch, backend_url)
    at.sidebar.radio(key="task").set_value("fundus").run()
    at = upload(at, fundus_image)
    expected = backend_predict(backend_url, fundus_image, default_for("fundus").key)
    assert not failures(at), failures(at)
    assert expected.get("gradable", True), "a real dev-set fundus photo failed the image gate"
    check_referral(at, expected)
    assert metric(at, "Predicted class") == [expected["label"]]
    assert metric(at, "Referable DR (grade ≥ 2)") == [f"{expected['derived']['referable']:.1%}"]
    assert metric(at, "Any DR (grade ≥ 1)") == [f"{expected['derived']['any']:.1%}"]


def test_several_uploads_table_and_csv(
    monkeypatch: pytest.MonkeyPatch, backend_url: str, oct_images: list[Path]
) -> None:
    scans = oct_images[:3]
    at = upload(run_app(monkeypatch, backend_url), *scans)
    table = at.main.dataframe[0].value
    assert table["filename"].tolist() == [p.name for p in scans]
    key = default_for("oct").key
    expected = [backend_predict(backend_url, p, key) for p in scans]
    assert table["label"].tolist() == [e["label"] for e in expected]
    assert table["gradable"].tolist() == [e.get("gradable", True) for e in expected]
    referrals = [None if pd.isna(r) else r for r in table["referral"]]
    assert referrals == [(e.get("referral") or {}).get("level") for e in expected]
    probs = table[[f"p_{c}" for c in default_for("oct").class_names]]
    assert probs.sum(axis=1).round(4).tolist() == [1.0] * len(scans)
    assert "Download results CSV" in [b.label for b in at.get("download_button")]
    # Only the first card is open, so only one CAM was requested and shown.
    assert len(cam_captions(at)) == 1


def test_auto_detect_routes_a_fundus_photo(
    monkeypatch: pytest.MonkeyPatch, backend_url: str, fundus_image: Path
) -> None:
    at = run_app(monkeypatch, backend_url)
    at.sidebar.radio(key="task").set_value("auto").run()
    at = upload(at, fundus_image)
    expected = backend_predict(backend_url, fundus_image, "auto")
    assert (expected["task"], expected["model"]) == ("fundus", default_for("fundus").key)
    assert not failures(at), failures(at)
    check_referral(at, expected)
    assert metric(at, "Predicted class") == [expected["label"]]
    assert any(c.value.startswith(f"Model {expected['model']} v") for c in at.main.caption)


def test_pdf_report_from_the_backend(monkeypatch: pytest.MonkeyPatch, backend_url: str, oct_image: Path) -> None:
    at = upload(run_app(monkeypatch, backend_url), oct_image)
    next(b for b in at.button if b.label == "Create PDF report").click().run()
    assert not at.exception and not failures(at), failures(at)
    assert "Download PDF report" in [b.label for b in at.get("download_button")]


def test_undecodable_upload_shows_backend_detail(monkeypatch: pytest.MonkeyPatch, backend_url: str) -> None:
    junk = b"this is not an image"
    at = upload(run_app(monkeypatch, backend_url), ("notes.png", junk))
    resp = requests.post(f"{backend_url}/predict", files={"file": ("notes.png", junk, "image/png")}, timeout=30)
    assert 400 <= resp.status_code < 500
    assert [e.value for e in at.main.error] == [resp.json()["detail"]]
    assert not metric(at, "Predicted class")


def test_backend_down_then_back(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    at = run_app(monkeypatch, f"http://127.0.0.1:{port}")
    errors = [e.value for e in at.sidebar.error]
    assert len(errors) == 1 and errors[0].startswith("Backend unreachable: "), errors
    assert not at.sidebar.success
    assert "No model to run" in at.main.warning[0].value
    # The backend comes up on that port: the next rerun recovers, nothing stale from the failure.
    with FakeServer(port=port):
        at.run()
        assert not at.exception
        assert [s.value for s in at.sidebar.success] == ["Backend ready"]
        assert not at.error
        upload(at, ("scan.png", png_bytes(32)))
        assert metric(at, "Predicted class") == ["DRUSEN"]


def test_backend_not_ready_shows_detail(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeServer() as fake:
        fake.ready = False
        at = run_app(monkeypatch, fake.url)
    assert [w.value for w in at.sidebar.warning] == [f"Backend not ready: {fake.not_ready_detail}"]
    assert not at.sidebar.success and not at.sidebar.error


def test_models_page(monkeypatch: pytest.MonkeyPatch, backend_url: str, backend_models: list) -> None:
    at = run_app(monkeypatch, backend_url)
    at.switch_page("app_pages/models.py").run()
    assert not at.exception
    headers = [h.value for h in at.main.subheader]
    assert len(headers) == len(backend_models)
    for m, h in zip(backend_models, headers, strict=True):
        assert h.startswith(f"{m['id']} (v{m['version']})")


def test_upload_limit_is_the_backends_and_refusals_are_said_on_the_page(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeServer() as fake:
        fake.max_upload_mb = 0.5
        at = run_app(monkeypatch, fake.url)
        # The uploader's own limit ("Limit 1MB per file") comes from the backend, never Streamlit's 200 MB.
        assert at.file_uploader(key="uploads").proto.max_upload_size_mb == 1
        big = ("big.png", png_bytes(32) + b"\0" * 700_000)
        upload(at, big, ("notes.txt", b"not an image"), ("scan.png", png_bytes(32)), ("copy.png", png_bytes(32)))
        errors = failures(at)
        assert "big.png is 0.7 MB, over the limit of 0.5 MB per file; it was not sent." in errors
        assert any(e.startswith("notes.txt: not an image this service reads (.jpg, .jpeg") for e in errors), errors
        assert "copy.png is the same file as scan.png; it is shown once." in errors
        # Only the one good, distinct file reached the backend.
        sent = [r for r in fake.requests if r.path == "/predict"]
        assert [f[0] for r in sent for f in r.fields.get("file", [])] == ["scan.png"]
        assert metric(at, "Predicted class") == ["DRUSEN"]
