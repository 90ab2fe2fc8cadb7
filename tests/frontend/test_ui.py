"""Pure helpers of frontend.ui (metrics tables, results table, previews) and AppTest runs on a fake backend."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pandas as pd
import pytest
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest

from frontend import ui
from frontend.client import BackendError, GateInfo, ModelInfo, Prediction, Referral
from tests.frontend.fake_backend import (
    DARK_REASONS,
    DR,
    FUNDUS_REFER_POINT,
    NOT_INFORMATIVE_ADVICE,
    NOTE,
    OCT,
    FakeBackend,
    FakeServer,
    oct_referral,
    png_bytes,
)
from tests.support import APP

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


FUNDUS_REFER_TEXT = (
    "Refer at P(grade >= 2) >= 0.23: sensitivity 0.87 (0.80-0.92), specificity 0.55 (0.51-0.59) "
    "on fundus-train validation split (742 images, 371 patients); n=742, 163 positive"
)
IDRID_CHECK_TEXT = "check idrid: sensitivity 0.80 (0.72-0.87), specificity 0.61 (0.50-0.72); n=103, 61 positive"


def test_operating_point_lines_served_fitted_and_checks() -> None:
    model = ModelInfo(
        id="dr",
        task="fundus",
        classes=tuple(DR),
        operating_points={"refer": FUNDUS_REFER_POINT},
        served_thresholds={"refer": 0.23, "urgent": 0.5},
    )
    assert ui.operating_point_lines(model) == [
        [FUNDUS_REFER_TEXT, IDRID_CHECK_TEXT],
        ["Urgent referral at P(proliferative) >= 0.50 (not a validated operating point)"],
    ]


def test_operating_point_lines_setting_overrides_checkpoint() -> None:
    model = ModelInfo(
        id="dr",
        task="fundus",
        operating_points={"refer": FUNDUS_REFER_POINT},
        served_thresholds={"refer": 0.4},
    )
    [[head, check]] = ui.operating_point_lines(model)
    assert head.startswith(
        "Refer at P(grade >= 2) >= 0.40 (service setting; the checkpoint's operating point is 0.23: "
    )
    assert "sensitivity 0.87 (0.80-0.92)" in head
    assert check == IDRID_CHECK_TEXT.replace("check idrid:", "check idrid at 0.23:")
    # An older backend without served thresholds: the checkpoint's own threshold is what it applies.
    older = ModelInfo(id="dr", task="fundus", operating_points={"refer": FUNDUS_REFER_POINT})
    assert ui.operating_point_lines(older)[0][0] == FUNDUS_REFER_TEXT
    # OCT wording; a model without a referral policy has no lines.
    oct_model = ModelInfo(id="o", task="oct", served_thresholds={"urgent": 0.5, "routine": 0.6})
    assert [lines[0] for lines in ui.operating_point_lines(oct_model)] == [
        "Urgent referral at P(CNV) + P(DME) >= 0.50 (not a validated operating point)",
        "Routine referral at P(CNV) + P(DME) + P(DRUSEN) >= 0.60 (not a validated operating point)",
    ]
    assert ui.operating_point_lines(ModelInfo(id="x", task="other")) == []


def test_not_informative_referral_title() -> None:
    assert ui.referral_title("not_informative") == "No advice (model not informative)"
    assert ui.REFERRAL_STYLES["not_informative"][1] == "warning"
    pred = Prediction("m", "1", "fundus", "No DR", 0.5, {"No DR": 0.5}, referral=_ref("not_informative"))
    assert ui.result_summary(pred) == "No DR (50%) · No advice (model not informative)"


def _ref(level: str) -> Referral:
    return Referral(level=level, advice=f"advice for {level}", reason="P = 0.7 >= 0.5", note=NOTE)


def _dark(model: str = "m", task: str = "oct") -> Prediction:
    gate = GateInfo("oct", gradable=False, reasons=tuple(DARK_REASONS))
    return Prediction(model, "1", task, None, None, None, gradable=False, referral=_ref("ungradable"), gate=gate)


def test_results_table_rows_and_errors() -> None:
    model = ModelInfo(id="m", task="oct", classes=tuple(OCT))
    probs = dict(zip(OCT, [0.1, 0.2, 0.3, 0.4], strict=True))
    pred = Prediction("m", "1", "oct", "NORMAL", 0.4, probs, referral=_ref("observation"))
    ups = [ui.Upload(f"{c}.png", c.encode(), f"d{c}", f"k{c}") for c in "abc"]
    results = [pred, _dark(), BackendError("not_retinal_image", "c.png is not a retinal image", 422)]
    table = ui.results_table(model, ups, results)
    head = ["filename", "label", "confidence", "referral", "gradable"]
    assert table.columns.tolist() == [*head, *(f"p_{c}" for c in OCT), "error"]
    assert table["filename"].tolist() == ["a.png", "b.png", "c.png"]
    assert table.loc[0, "p_NORMAL"] == 0.4 and table.loc[0, "label"] == "NORMAL"
    # The refused image says so (it showed None in every column).
    assert cells(table["referral"]) == ["observation", "ungradable", ui.REFUSED]
    assert cells(table["gradable"]) == [True, False, None]
    # The ungradable image has no diagnosis: no label, no probabilities.
    assert pd.isna(table.loc[1, "label"]) and table.loc[1, [f"p_{c}" for c in OCT]].isna().all()
    assert table.loc[2, "error"] == "c.png is not a retinal image"
    csv = table.to_csv(index=False)
    assert csv.splitlines()[0] == "filename,label,confidence,referral,gradable,p_CNV,p_DME,p_DRUSEN,p_NORMAL,error"
    # No error column when every image succeeded.
    assert "error" not in ui.results_table(model, ups[:1], [pred]).columns


def test_results_table_auto_lists_the_model_and_every_class() -> None:
    auto = ui.auto_model([])
    oct_pred = Prediction("oct-x", "1", "oct", "CNV", 0.7, dict(zip(OCT, [0.7, 0.1, 0.1, 0.1], strict=True)))
    dr = dict(zip(DR, [0.1, 0.2, 0.4, 0.2, 0.1], strict=True))
    fundus = Prediction("dr-x", "1", "fundus", "Moderate", 0.4, dr, derived={"referable": 0.7, "any": 0.9})
    ups = [ui.Upload(f"{c}.png", c.encode(), f"d{c}", f"k{c}") for c in "ab"]
    table = ui.results_table(auto, ups, [oct_pred, fundus])
    assert table["model"].tolist() == ["oct-x", "dr-x"]
    p_cols = [c for c in table.columns if c.startswith("p_")]
    assert p_cols == [f"p_{c}" for c in [*OCT, *DR, "referable", "any"]]
    assert table.loc[0, "p_CNV"] == 0.7 and pd.isna(table.loc[0, "p_Moderate"])
    assert table.loc[1, "p_referable"] == 0.7


def cells(column: pd.Series) -> list[object]:
    """A column's values with pandas' missing markers (None, NaN) as None."""
    return [None if pd.isna(v) else v for v in column]


def test_calibration_text() -> None:
    cal = {"method": "temperature", "temperature": 1.234, "fitted_on": "val", "ece_before": 0.0812, "ece_after": 0.02}
    m = ModelInfo(id="m", task="oct", temperature=1.234, calibration=cal)
    assert ui.calibration_text(m) == "Temperature scaling (T = 1.23, fitted on val): ECE 0.081 → 0.020"
    # The backend's temperature when the block has none; only ECE after.
    m = ModelInfo(id="m", task="oct", temperature=2.0, calibration={"ece_after": 0.05})
    assert ui.calibration_text(m) == "Temperature scaling (T = 2.00): ECE 0.050"
    assert ui.calibration_text(ModelInfo(id="m", task="oct", temperature=1.0)) == (
        "Not calibrated (raw softmax probabilities)."
    )
    assert ui.calibration_text(ModelInfo(id="m", task="oct")).startswith("Not calibrated")


def test_result_summary() -> None:
    probs = dict(zip(OCT, [0.1, 0.2, 0.6, 0.1], strict=True))
    pred = Prediction("m", "1", "oct", "DRUSEN", 0.6, probs, referral=_ref("routine"))
    assert ui.result_summary(pred) == "DRUSEN (60%) · Routine referral"
    assert ui.result_summary(_dark()) == "Ungradable image, retake"
    assert ui.result_summary(BackendError("wrong_modality", "a fundus photo")) == (
        "Wrong image type for this model: a fundus photo"
    )
    assert ui.result_summary(BackendError("invalid_image", "truncated")) == "truncated"
    # With the chosen model the wrong-modality line speaks of images and tasks, not query parameters.
    api = "this looks like a colour fundus photo, but model 'oct-x' reads OCT B-scans: send it with model=fundus"
    oct_model = ModelInfo(id="oct-x", task="oct")
    assert ui.result_summary(BackendError("wrong_modality", api), oct_model) == (
        "Wrong image type for this model: This looks like a colour fundus photo; the OCT model reads OCT "
        "B-scans only, so nothing was predicted."
    )


def test_refusal_text_names_the_task_to_pick() -> None:
    err = BackendError("wrong_modality", "this looks like an OCT B-scan ... send it with model=oct (model oct-x)")
    text, hint = ui.refusal_text(err, ModelInfo(id="dr-x", task="fundus"))
    assert text.startswith("This looks like an OCT B-scan; the Fundus model reads colour fundus photos only")
    assert hint == f"Choose **OCT** under Task in the sidebar, or {ui.AUTO_LABEL}."
    for words in ("model=", "oct-x", "dr-x"):
        assert words not in text + hint
    # Other refusals keep the backend's own words and the gate's hint; a task the UI does not know too.
    assert ui.refusal_text(BackendError("not_retinal_image", "a cat"))[0] == "a cat"
    assert ui.refusal_text(err, ModelInfo(id="x", task="other"))[0] == err.message


def test_results_display_order_puts_the_reason_first() -> None:
    model = ModelInfo(id="m", task="oct", classes=tuple(OCT))
    ups = [ui.Upload("a.png", b"a", "da", "ka"), ui.Upload("fundus.png", b"b", "db", "kb")]
    api = "this looks like a colour fundus photo, but model 'm' reads OCT B-scans: send it with model=fundus"
    table = ui.results_table(model, ups, [_dark(), BackendError("wrong_modality", api, 422)])
    assert ui.results_display_order(table)[:2] == ["filename", "error"]
    assert table.loc[1, "error"].startswith("This looks like a colour fundus photo; the OCT model")
    assert table.loc[1, "referral"] == ui.REFUSED
    assert ui.results_display_order(table.drop(columns="error"))[0:2] == ["filename", "label"]


# As GET /models sends them (retina.figures.Evaluation.to_dict), with a value the old sidebar table cut.
FIGURES = [
    {
        "name": "test",
        "kind": "test",
        "title": "Held-out test split (742 images)",
        "heading": "Test split (742 images, 371 patients)",
        "n": 742,
        "n_patients": 371,
        "figures": [
            {
                "key": "balanced_accuracy",
                "label": "Balanced accuracy",
                "value": 0.326,
                "ci95": [0.171, 0.502],
                "text": "0.326 [0.171, 0.502]",
            },
            {"key": "ece", "label": "ECE after temperature scaling", "value": 0.039, "ci95": None, "text": "0.039"},
        ],
    },
    {
        "name": "val",
        "kind": "validation",
        "title": "Validation patients",
        "heading": "Validation split (742 images, 371 patients)",
        "n": 742,
        "n_patients": 371,
        "figures": [{"key": "accuracy", "label": "Accuracy", "value": 0.737, "ci95": None, "text": "0.737"}],
    },
]


def test_figure_tables_show_the_backend_texts_and_fall_back_to_metrics() -> None:
    model = ModelInfo(id="m", task="fundus", figures=tuple(FIGURES), metrics=TRAINING_METRICS)
    tables = ui.figure_tables(model)
    assert [(h, k) for h, k, _, _ in tables] == [
        ("Test split (742 images, 371 patients)", "test"),
        ("Validation split (742 images, 371 patients)", "validation"),
    ]
    assert tables[0][3].values.tolist() == [
        ["Balanced accuracy", "0.326 [0.171, 0.502]"],
        ["ECE after temperature scaling", "0.039"],
    ]
    # No figures (an older backend): the training-run metrics, as before.
    old = ui.figure_tables(ModelInfo(id="m", task="oct", metrics=TRAINING_METRICS))
    assert [h for h, *_ in old] == [t for t, _ in ui.headline_metrics(TRAINING_METRICS)]


def test_sidebar_and_models_page_show_the_figures_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeServer() as fake:
        fake.models[1]["figures"] = FIGURES
        at = _app(monkeypatch, fake)
        at.sidebar.radio(key="task").set_value("fundus").run()
        assert not at.exception
        # The lead set (not a validation split) in a table that wraps; the training-run 0.7 nowhere.
        lead = at.sidebar.table[0].value
        assert lead["value"].tolist() == ["0.326 [0.171, 0.502]", "0.039"]
        assert "**Test split (742 images, 371 patients)**" in [m.value for m in at.sidebar.markdown]
        assert not at.sidebar.dataframe
        assert [e.label for e in at.sidebar.expander if e.label.startswith("Other")] == ["Other evaluation sets (1)"]
        at.switch_page("app_pages/models.py").run()
    assert not at.exception
    values = [v for t in at.main.table for v in t.value["value"].tolist()]
    assert "0.326 [0.171, 0.502]" in values and "0.737" in values
    assert "0.700" not in values  # fundus-test's training-run metrics are not shown beside its figures


def test_auto_model_stands_for_the_task_defaults() -> None:
    models = [
        ModelInfo(id="oct-a", task="oct", version="1", default=False),
        ModelInfo(id="oct-b", task="oct", version="2", default=True),
        ModelInfo(id="dr-a", task="fundus", version="3", default=True, loaded=False, error="missing"),
    ]
    assert [m.id for m in ui.task_defaults(models)] == ["oct-b", "dr-a"]
    auto = ui.auto_model(models)
    assert (auto.id, auto.task, auto.loaded) == ("auto", "auto", True)
    # The cache key changes when either default model does.
    assert auto.version == "oct-b@2+dr-a@3"
    assert "`oct-b` (v2)" in auto.description and "dr-a" not in auto.description
    assert not ui.auto_model(models[:1]).loaded


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


# ----------------------------------------------------------------------------- trust layer on a fake backend


def _files(at: AppTest, *names: str) -> AppTest:
    """Upload ``names`` (the fake decides the gate's answer from the name); distinct bytes per file."""
    files = [(n, png_bytes(16 + i), "image/png") for i, n in enumerate(names)]
    at.file_uploader(key="uploads").set_value(files).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _captions(at: AppTest) -> list[str]:
    return [c.value for c in at.caption]


@pytest.mark.parametrize(
    ("probs", "style", "title"),
    [
        ([0.1, 0.2, 0.6, 0.1], "warning", "Routine referral"),
        ([0.5, 0.3, 0.1, 0.1], "error", "Urgent referral"),
        ([0.05, 0.05, 0.1, 0.8], "success", "Observation"),
    ],
)
def test_referral_is_shown_with_its_level_and_note(
    monkeypatch: pytest.MonkeyPatch, probs: list[float], style: str, title: str
) -> None:
    with FakeServer() as fake:
        fake.oct_probs = dict(zip(OCT, probs, strict=True))
        at = _files(_app(monkeypatch, fake), "scan.png")
    alerts = [a.value for a in getattr(at.main, style) if a.value.startswith(f"**{title}**")]
    assert len(alerts) == 1, [a.value for a in getattr(at.main, style)]
    expected = oct_referral(fake.oct_probs)
    assert expected["advice"] in alerts[0] and expected["reason"] in alerts[0]
    assert any(NOTE in c for c in _captions(at)), "research-use note missing beside the referral"
    # The rest of the card is still there, and the referral is the only alert of its kind.
    assert [m.value for m in at.metric if m.label == "Predicted class"] == [max(fake.oct_probs, key=fake.oct_probs.get)]
    assert len(at.get("vega_lite_chart")) == 1
    others = [a.value for kind in ("error", "warning", "success") for a in getattr(at.main, kind)]
    assert others == alerts


def test_ungradable_shows_reasons_and_no_probabilities(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeServer() as fake:
        at = _files(_app(monkeypatch, fake), "dark_scan.png")
    assert not at.error
    [warning] = [w.value for w in at.main.warning]
    assert warning.startswith("**Ungradable image**")
    assert all(reason in warning for reason in DARK_REASONS)
    assert "Retake the image." in warning
    assert any(NOTE in c for c in _captions(at))
    # No diagnosis anywhere: no label, no confidence, no chart, and no CAM asked for.
    assert not at.metric
    assert not at.get("vega_lite_chart")
    assert not fake.calls("/gradcam")
    assert "Image check: OCT B-scan, not gradable" in _captions(at)


@pytest.mark.parametrize(
    ("filename", "title", "detail"),
    [
        ("notretina_cat.png", "Not a retinal image", "notretina_cat.png is neither an OCT B-scan"),
        # Plain words, not the API's ("model 'oct-test' is for oct (use model=fundus or auto)").
        ("fundus_photo.png", "Wrong image type for this model", "This looks like a colour fundus photo; the OCT model"),
    ],
)
def test_gate_refusal_is_a_warning_not_a_crash(
    monkeypatch: pytest.MonkeyPatch, filename: str, title: str, detail: str
) -> None:
    with FakeServer() as fake:
        at = _files(_app(monkeypatch, fake), filename)
    assert not at.error
    [warning] = [w.value for w in at.main.warning]
    assert warning.startswith(f"**{title}**") and detail in warning
    assert not at.metric and not at.get("vega_lite_chart")
    assert "Create PDF report" not in [b.label for b in at.button]


def test_several_uploads_one_bad_table_has_referral_and_gradable(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeServer() as fake:
        at = _files(_app(monkeypatch, fake), "scan.png", "dark.png", "notretina.png")
    assert not at.error
    table = at.main.dataframe[0].value
    assert table["filename"].tolist() == ["scan.png", "dark.png", "notretina.png"]
    assert cells(table["referral"]) == ["routine", "ungradable", ui.REFUSED]
    assert cells(table["gradable"]) == [True, False, None]
    assert table["error"].iloc[2].startswith("notretina.png is neither")
    labels = [e.label for e in at.main.expander]
    assert labels == [
        "scan.png: DRUSEN (60%) · Routine referral",
        "dark.png: Ungradable image, retake",
        "notretina.png: Not a retinal image: notretina.png is neither an OCT B-scan nor a colour fundus photo",
    ]
    # No PDF is made up front, for any image.
    assert not fake.calls("/report")


def test_report_download_on_demand(monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    served: list[tuple[bytes, str, str | None]] = []
    original = MemoryMediaFileStorage.load_and_get_id

    def record(self: MemoryMediaFileStorage, data: object, mimetype: str, kind: object, filename: object = None) -> str:
        served.append((data, mimetype, filename))  # type: ignore[arg-type]
        return original(self, data, mimetype, kind, filename)  # type: ignore[arg-type]

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", record)
    with FakeServer() as fake:
        at = _files(_app(monkeypatch, fake), "scan.png")
        assert not fake.calls("/report"), "the PDF must not be made before it is asked for"
        assert "Download PDF report" not in [b.label for b in at.get("download_button")]
        next(b for b in at.button if b.label == "Create PDF report").click().run()
        assert not at.exception and not at.error
        assert "Download PDF report" in [b.label for b in at.get("download_button")]
        [req] = fake.calls("/report")
        assert req.query == {"model": "oct-test", "method": "gradcam"}
        assert req.fields["file"][0][0] == "scan.png"
        pdfs = [(d, f) for d, mime, f in served if mime == "application/pdf"]
        assert pdfs and all(d == fake.reports[-1] for d, _ in pdfs)
        assert pdfs[-1][0].startswith(b"%PDF") and pdfs[-1][1] == "scan_oct-test_report.pdf"
        # Later reruns keep the button and ask the backend nothing more.
        at.slider(key="cam-alpha").set_value(0.7).run()
        assert "Download PDF report" in [b.label for b in at.get("download_button")]
        assert len(fake.calls("/report")) == 1


def test_report_failure_is_shown_and_can_be_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeServer() as fake:
        fake.fail["/report"] = (503, {"error": "not_ready", "detail": "report renderer busy"})
        at = _files(_app(monkeypatch, fake), "scan.png")
        next(b for b in at.button if b.label == "Create PDF report").click().run()
        assert not at.exception
        assert [e.value for e in at.error] == ["PDF report unavailable: report renderer busy"]
        del fake.fail["/report"]
        at.run()
        next(b for b in at.button if b.label == "Create PDF report").click().run()
        assert not at.error
        assert "Download PDF report" in [b.label for b in at.get("download_button")]


def test_auto_detect_sends_model_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeServer() as fake:
        at = _app(monkeypatch, fake)
        radio = at.sidebar.radio(key="task")
        assert radio.options == ["OCT", "Fundus", ui.AUTO_LABEL]
        radio.set_value("auto").run()
        assert not at.exception
        assert any("`oct-test` (v1.2.3), `fundus-test` (v2.0.0)" in c.value for c in at.sidebar.caption)
        _files(at, "fundus_left.png")
        assert [r.query["model"] for r in fake.calls("/predict")] == ["auto"]
        assert [m.value for m in at.metric if m.label == "Predicted class"] == ["Moderate"]
        assert [m.value for m in at.metric if m.label == "Referable DR (grade ≥ 2)"] == ["70.0%"]
        assert [w.value for w in at.main.warning if w.value.startswith("**Refer to an ophthalmologist**")]
        # CAM and report go to the model that answered, so they explain the prediction shown.
        assert [r.query["model"] for r in fake.calls("/gradcam")] == ["fundus-test"]
        next(b for b in at.button if b.label == "Create PDF report").click().run()
        assert [r.query["model"] for r in fake.calls("/report")] == ["fundus-test"]
        # A mixed batch: one table, with the model that answered each image.
        _files(at, "fundus_left.png", "scan.png")
        assert not at.error
        table = at.main.dataframe[0].value
        assert table["model"].tolist() == ["fundus-test", "oct-test"]
        assert table["referral"].tolist() == ["refer", "routine"]


def test_no_referral_policy_and_gate_off(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeServer() as fake:
        fake.referral_enabled = False
        fake.gate_enabled = False
        at = _files(_app(monkeypatch, fake), "scan.png")
    assert not at.error and not at.main.warning and not at.main.success
    assert "No referral advice: this model's classes have no referral policy." in _captions(at)
    assert [m.value for m in at.metric if m.label == "Predicted class"] == ["DRUSEN"]
    assert not [c for c in _captions(at) if "Image check" in c]


def test_dicom_is_accepted_without_preview(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeServer() as fake:
        at = _app(monkeypatch, fake)
        # The uploader takes every type (ui.screen_uploads says on the page why a file is left out),
        # and DICOM is one of the types that are sent.
        assert list(at.file_uploader(key="uploads").proto.type) == [] and "dcm" in ui.UPLOAD_TYPES
        at.file_uploader(key="uploads").set_value(("scan.dcm", b"\0" * 128 + b"DICM", "application/dicom")).run()
    assert not at.exception and not at.error
    assert "No preview: the browser cannot show this file." in _captions(at)
    [req] = fake.calls("/predict")
    assert req.fields["file"][0][0] == "scan.dcm"


def test_operating_points_in_sidebar_and_models_page(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeServer() as fake:
        at = _app(monkeypatch, fake)
        # OCT (default task): served thresholds without a fitted operating point.
        captions = [c.value for c in at.sidebar.caption]
        assert "Urgent referral at P(CNV) + P(DME) >= 0.50 (not a validated operating point)" in captions
        at.sidebar.radio(key="task").set_value("fundus").run()
        assert not at.exception
        captions = [c.value for c in at.sidebar.caption]
        assert f"{FUNDUS_REFER_TEXT}  \n· {IDRID_CHECK_TEXT}" in captions, captions
        assert "**Referral thresholds**" in [m.value for m in at.sidebar.markdown]
        assert not at.sidebar.warning, "an informative model carries no warning"
        at.switch_page("app_pages/models.py").run()
    assert not at.exception
    texts = [m.value for m in at.main.markdown]
    assert f"{FUNDUS_REFER_TEXT}  \n· {IDRID_CHECK_TEXT}" in texts


def test_not_informative_model_warns_and_gives_no_advice(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeServer() as fake:
        fake.models[1]["informative"] = False
        at = _app(monkeypatch, fake)
        at.sidebar.radio(key="task").set_value("fundus").run()
        assert [w.value for w in at.sidebar.warning] == [ui.NOT_INFORMATIVE]
        _files(at, "fundus_left.png")
        # The referral box: a warning, titled "no advice", with the backend's advice and the note.
        [alert] = [w.value for w in at.main.warning]
        assert alert.startswith("**No advice (model not informative)**")
        assert NOT_INFORMATIVE_ADVICE in alert
        assert any(NOTE in c for c in _captions(at))
        assert not at.main.error and not at.main.success
        # The prediction itself is still shown.
        assert [m.value for m in at.metric if m.label == "Predicted class"] == ["Moderate"]
        # Auto-detect lists the default models: the non-informative one is flagged there too.
        at.sidebar.radio(key="task").set_value("auto").run()
        assert [w.value for w in at.sidebar.warning] == [ui.NOT_INFORMATIVE]
        at.switch_page("app_pages/models.py").run()
    assert not at.exception
    assert ui.NOT_INFORMATIVE in [w.value for w in at.main.warning]


def test_ece_before_and_after_on_models_page(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeServer() as fake:
        at = _app(monkeypatch, fake)
        assert "Calibration: Temperature scaling (T = 1.50, fitted on val): ECE 0.081 → 0.023" in [
            c.value for c in at.sidebar.caption
        ]
        at.switch_page("app_pages/models.py").run()
    assert not at.exception
    texts = [m.value for m in at.main.markdown]
    assert "Calibration: Temperature scaling (T = 1.50, fitted on val): ECE 0.081 → 0.023" in texts
    assert "Calibration: Not calibrated (raw softmax probabilities)." in texts


# ----------------------------------------------------------------------------- site profiles

SITE = {
    "name": "clinic-a",
    "loaded": True,
    "default": False,
    "error": None,
    "profile": {
        "name": "clinic-a",
        "temperature": 1.4,
        "n_images": 150,
        "n_referable": 60,
        "refer": {
            "threshold": 0.31,
            "fit": {
                "sensitivity": 0.9,
                "sensitivity_ci95": [0.8, 0.97],
                "specificity": 0.74,
                "specificity_ci95": [0.65, 0.82],
            },
        },
    },
}


def test_a_site_profile_can_be_picked_and_decides_fundus_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeServer() as fake:
        rejected = {"name": "old", "loaded": False, "error": "fitted for other weights", "profile": None}
        fake.models[1]["sites"] = [SITE, rejected]
        at = _app(monkeypatch, fake)
        at.sidebar.radio(key="task").set_value("fundus").run()
        picker = at.sidebar.selectbox(key="site")
        assert picker.options == ["Service default (model operating points)", "Model operating points", "clinic-a"]
        picker.set_value("clinic-a").run()
        assert any("specificity 0.74 [0.65, 0.82]" in c.value for c in at.sidebar.caption)
        _files(at, "fundus.png")
    assert not at.exception
    assert [r.query.get("site") for r in fake.calls("/predict")] == ["clinic-a"]
    assert all(r.query.get("site") == "clinic-a" for r in fake.calls("/gradcam"))
    alerts = [*at.warning, *at.error, *at.info, *at.success]
    assert any("site profile **clinic-a**" in a.value for a in alerts)


def test_no_site_picker_without_profiles_or_for_oct(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeServer() as fake:
        at = _app(monkeypatch, fake)
        assert not [s for s in at.sidebar.selectbox if s.key == "site"]
        _files(at, "a.png")
    assert "site" not in fake.calls("/predict")[0].query


def test_image_check_line_shows_the_learned_quality_grade() -> None:
    gate = GateInfo.from_json({"modality": "fundus", "gradable": True, "quality_grade": "Usable"})
    pred = Prediction("m", "1", "fundus", "No DR", 0.5, {"No DR": 0.5}, referral=_ref("rescreen"), gate=gate)
    assert ui.gate_text(pred) == "Image check: colour fundus photo, gradable, quality Usable"
    no_grade = Prediction("m", "1", "oct", "NORMAL", 0.5, {"NORMAL": 0.5}, gate=GateInfo("oct"))
    assert ui.gate_text(no_grade) == "Image check: OCT B-scan, gradable"
