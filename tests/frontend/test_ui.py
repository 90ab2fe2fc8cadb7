"""Pure helpers of frontend.ui (metrics tables, results table, previews) and AppTest runs on a fake backend."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest

from frontend import ui
from frontend.client import BackendError, ModelInfo, Prediction
from tests.frontend.conftest import APP
from tests.frontend.fake_backend import OCT, FakeBackend, FakeServer, png_bytes

TRAINING_METRICS = {
    "val": {
        "accuracy": 0.8,
        "accuracy_ci95": [0.61, 0.93],
        "balanced_accuracy": 0.75,
        "macro_f1": 0.7,
        "roc_auc": {"per_class": {"CNV": 0.9}, "macro": 0.88},
        "confusion_matrix": [[3, 1], [0, 4]],
        "ece": 0.05,
        "n": 20,
        "n_patients": 9,
    },
    "test": {"accuracy": 0.9, "macro_f1": 0.85, "n": 30, "n_patients": None},
    "best_epoch": 7,
}


@pytest.fixture(autouse=True)
def _fresh_caches() -> Iterator[None]:
    st.cache_data.clear()
    yield
    st.cache_data.clear()


def test_headline_metrics_test_first_with_ci() -> None:
    tables = ui.headline_metrics(TRAINING_METRICS)
    assert [t for t, _ in tables] == ["Test (n=30)", "Validation (n=20, 9 patients)"]
    test, val = (dict(zip(f["metric"], f["value"], strict=True)) for _, f in tables)
    assert test == {"Accuracy": "0.900", "Macro F1": "0.850"}
    assert val["Accuracy"] == "0.800 (0.61-0.93)"
    assert val["ROC AUC (macro)"] == "0.880"
    assert val["Calibration error (ECE)"] == "0.050"


def test_headline_metrics_prefer_cross_validation() -> None:
    metrics = {
        "val": {"accuracy": 0.14, "n": 7},
        "cv": {"balanced_accuracy": 0.325, "balanced_accuracy_ci95": [0.16, 0.51], "n": 46, "n_patients": 27},
    }
    tables = ui.headline_metrics(metrics)
    assert [t for t, _ in tables] == ["Cross-validation (n=46, 27 patients)"]
    assert tables[0][1].iloc[0].tolist() == ["Balanced accuracy", "0.325 (0.16-0.51)"]


def test_headline_metrics_fallbacks() -> None:
    [(title, frame)] = ui.headline_metrics({"note": "random weights", "test_accuracy": 0.5})
    assert title == "Metrics"
    assert dict(zip(frame["metric"], frame["value"], strict=True)) == {
        "note": "random weights",
        "test_accuracy": "0.500",
    }
    assert ui.headline_metrics({}) == []


def test_flatten_metrics_drops_matrices() -> None:
    flat = ui.flatten_metrics(TRAINING_METRICS)
    assert flat["val.roc_auc.per_class.CNV"] == 0.9
    assert flat["test.n_patients"] == "None"
    assert not any(k.startswith("val.confusion_matrix") or k.endswith("_ci95") for k in flat)


def test_results_table_rows_and_errors() -> None:
    model = ModelInfo(id="m", task="oct", classes=tuple(OCT))
    probs = dict(zip(OCT, [0.1, 0.2, 0.3, 0.4], strict=True))
    pred = Prediction("m", "1", "oct", "NORMAL", 0.4, probs)
    ups = [ui.Upload("a.png", b"a", "da", "ka"), ui.Upload("b.png", b"b", "db", "kb")]
    table = ui.results_table(model, ups, [pred, BackendError("invalid_image", "cannot decode b.png", 422)])
    assert table.columns.tolist() == ["filename", "label", "confidence", *(f"p_{c}" for c in OCT), "error"]
    assert table["filename"].tolist() == ["a.png", "b.png"]
    assert table.loc[0, "p_NORMAL"] == 0.4 and table.loc[0, "label"] == "NORMAL"
    assert table.loc[1, "error"] == "cannot decode b.png"
    csv = table.to_csv(index=False)
    assert csv.splitlines()[0] == "filename,label,confidence,p_CNV,p_DME,p_DRUSEN,p_NORMAL,error"
    # No error column when every image succeeded.
    assert "error" not in ui.results_table(model, ups[:1], [pred]).columns


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("img", "fmt"),
    [
        (Image.new("I;16", (40, 30), 40000), "TIFF"),
        (Image.new("CMYK", (40, 30), (0, 255, 0, 0)), "JPEG"),
        (Image.new("RGBA", (40, 30), (1, 2, 3, 100)), "WEBP"),
        (Image.new("P", (40, 30), 3), "BMP"),
    ],
)
def test_preview_png_converts_what_browsers_cannot_show(img: Image.Image, fmt: str) -> None:
    out = ui.preview_png(fmt + img.mode, _encode(img, fmt))
    assert out is not None
    with Image.open(io.BytesIO(out)) as back:
        assert back.format == "PNG" and back.size == (40, 30) and back.mode in ("L", "RGB")


def test_preview_png_downscales_and_rejects_junk() -> None:
    big = _encode(Image.new("RGB", (3000, 1500)), "PNG")
    with Image.open(io.BytesIO(ui.preview_png("big", big))) as back:  # type: ignore[arg-type]
        assert back.size == (ui.PREVIEW_MAX_PX, ui.PREVIEW_MAX_PX // 2)
    assert ui.preview_png("junk", b"not an image") is None


# ----------------------------------------------------------------------------- AppTest on a fake backend


def _app(monkeypatch: pytest.MonkeyPatch, fake: FakeBackend) -> AppTest:
    monkeypatch.setenv("RETINA_BACKEND_URL", fake.url)
    monkeypatch.delenv("RETINA_API_KEY", raising=False)
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_not_loaded_model_is_flagged_and_not_run(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeServer() as fake:
        fake.models[0]["metrics"] = TRAINING_METRICS
        fake.models.append(
            fake.models[0]
            | {"id": "oct-broken", "default": False, "version": None, "loaded": False, "error": "file missing"}
        )
        at = _app(monkeypatch, fake)
        select = at.sidebar.selectbox(key="model-oct")
        assert select.value == "oct-test"
        assert select.options == ["oct-test (v1.2.3)", "oct-broken (not loaded)"]
        assert [m.value for m in at.sidebar.markdown if m.value.startswith("**Test")] == ["**Test (n=30)**"]
        select.set_value("oct-broken").run()
        assert not at.exception
        assert "file missing" in at.sidebar.warning[0].value
        assert "not loaded" in at.main.warning[0].value
        assert not at.main.get("file_uploader")


def test_unauthorized_model_list_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeServer() as fake:
        # /ready passes, /models refuses: a wrong or missing RETINA_API_KEY.
        fake.fail["/models"] = (401, {"error": "unauthorized", "detail": "invalid API key"})
        at = _app(monkeypatch, fake)
    assert [s.value for s in at.sidebar.success] == ["Backend ready"]
    assert [w.value for w in at.sidebar.warning] == ["Model list unavailable: invalid API key"]
    assert "No model to run" in at.main.warning[0].value


def test_api_key_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeServer() as fake:
        monkeypatch.setenv("RETINA_BACKEND_URL", fake.url)
        monkeypatch.setenv("RETINA_API_KEY", "s3cret")
        at = AppTest.from_file(str(APP), default_timeout=60).run()
        at.file_uploader(key="uploads").set_value(("a.png", png_bytes(16), "image/png")).run()
    assert not at.exception and not at.error
    assert {r.path for r in fake.requests} >= {"/ready", "/models", "/predict", "/gradcam"}
    # Defaults of the CAM controls reach the backend as query parameters.
    [cam] = fake.calls("/gradcam")
    assert cam.query == {
        "model": "oct-test",
        "method": "gradcam",
        "target": "DRUSEN",
        "alpha": "0.5",
        "size": "input",
        "format": "json",
    }
    assert all(r.headers.get("X-API-Key") == "s3cret" for r in fake.requests)


def test_cam_failure_keeps_prediction(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeServer() as fake:
        fake.fail["/gradcam"] = (422, {"error": "bad_parameter", "detail": "target 'X' is not a class"})
        at = _app(monkeypatch, fake)
        at.file_uploader(key="uploads").set_value(("a.png", png_bytes(16), "image/png")).run()
        assert not at.exception
        assert [m.value for m in at.metric if m.label == "Predicted class"] == ["DRUSEN"]
        assert [e.value for e in at.error] == ["CAM unavailable: target 'X' is not a class"]
        # The failure was not cached: once the backend answers, the overlay appears.
        del fake.fail["/gradcam"]
        at.run()
    assert not at.error
    assert [c for img in at.image for c in img.captions if c.startswith("gradcam for DRUSEN")]
