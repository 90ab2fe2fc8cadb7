"""The app in AppTest against the scripted backend (``fake_backend.py``), for states a real backend cannot be
put in on demand; and the upload preview. The pure text and tables are tested in ``test_text.py`` and
``test_tables.py``."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest

from frontend import tables, text
from frontend.components.upload import PREVIEW_MAX_PX, preview_png
from frontend.uploads import UPLOAD_TYPES
from tests.frontend.fake_backend import (
    DARK_REASONS,
    HEADLINES,
    NO_POLICY_NOTE,
    NOT_INFORMATIVE_ADVICE,
    NOTE,
    OCT,
    OPERATING_POINT_TEXT,
    UNGRADABLE_ADVICE,
    FakeBackend,
    FakeServer,
    oct_referral,
    png_bytes,
)
from tests.frontend.test_tables import TRAINING_METRICS, cells
from tests.support import APP


@pytest.fixture(autouse=True)
def _fresh_caches() -> Iterator[None]:
    st.cache_data.clear()
    yield
    st.cache_data.clear()


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
    out = preview_png(fmt + img.mode, _encode(img, fmt))
    assert out is not None
    with Image.open(io.BytesIO(out)) as back:
        assert back.format == "PNG" and back.size == (40, 30) and back.mode in ("L", "RGB")


def test_preview_png_downscales_and_rejects_junk() -> None:
    big = _encode(Image.new("RGB", (3000, 1500)), "PNG")
    with Image.open(io.BytesIO(preview_png("big", big))) as back:  # type: ignore[arg-type]
        assert back.size == (PREVIEW_MAX_PX, PREVIEW_MAX_PX // 2)
    assert preview_png("junk", b"not an image") is None


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
    ("probs", "style", "level"),
    [
        ([0.1, 0.2, 0.6, 0.1], "warning", "routine"),
        ([0.5, 0.3, 0.1, 0.1], "error", "urgent"),
        ([0.05, 0.05, 0.1, 0.8], "success", "observation"),
    ],
)
def test_referral_is_shown_with_its_level_and_note(
    monkeypatch: pytest.MonkeyPatch, probs: list[float], style: str, level: str
) -> None:
    with FakeServer() as fake:
        fake.oct_probs = dict(zip(OCT, probs, strict=True))
        at = _files(_app(monkeypatch, fake), "scan.png")
    title = HEADLINES[level]  # the backend's headline, printed as sent
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
    assert warning.startswith(f"**{HEADLINES['ungradable']}**")
    assert all(reason in warning for reason in DARK_REASONS)
    assert UNGRADABLE_ADVICE in warning  # the backend's words ("Retake it ..."), none of the UI's own
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
    assert cells(table["referral"]) == ["routine", "ungradable", tables.REFUSED]
    assert cells(table["gradable"]) == [True, False, None]
    assert table["error"].iloc[2].startswith("notretina.png is neither")
    labels = [e.label for e in at.main.expander]
    assert labels == [
        f"scan.png: DRUSEN (60%) · {HEADLINES['routine']}",
        f"dark.png: {HEADLINES['ungradable']}",
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
        assert radio.options == ["OCT", "Fundus", text.AUTO_LABEL]
        radio.set_value("auto").run()
        assert not at.exception
        assert any("`oct-test` (v1.2.3), `fundus-test` (v2.0.0)" in c.value for c in at.sidebar.caption)
        _files(at, "fundus_left.png")
        assert [r.query["model"] for r in fake.calls("/predict")] == ["auto"]
        assert [m.value for m in at.metric if m.label == "Predicted class"] == ["Moderate"]
        assert [m.value for m in at.metric if m.label == "Referable DR (grade ≥ 2)"] == ["70.0%"]
        assert [w.value for w in at.main.warning if w.value.startswith(f"**{HEADLINES['refer']}**")]
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
    # No referral box; the model's card in the sidebar carries the backend's note on why.
    assert [w.value for w in at.sidebar.warning] == [NO_POLICY_NOTE]
    assert [m.value for m in at.metric if m.label == "Predicted class"] == ["DRUSEN"]
    assert not [c for c in _captions(at) if "Image check" in c]


def test_dicom_is_accepted_without_preview(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeServer() as fake:
        at = _app(monkeypatch, fake)
        # The uploader takes every type (uploads.screen_uploads says on the page why a file is left out),
        # and DICOM is one of the types that are sent.
        assert list(at.file_uploader(key="uploads").proto.type) == [] and "dcm" in UPLOAD_TYPES
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
        assert OPERATING_POINT_TEXT["oct-test"]["urgent"] in captions
        at.sidebar.radio(key="task").set_value("fundus").run()
        assert not at.exception
        captions = [c.value for c in at.sidebar.caption]
        refer = OPERATING_POINT_TEXT["fundus-test"]["refer"]
        assert refer in captions, captions  # the backend's sentence alone (its checks are in it)
        assert "**Referral thresholds**" in [m.value for m in at.sidebar.markdown]
        assert not at.sidebar.warning, "an informative model carries no warning"
        at.switch_page("app_pages/models.py").run()
    assert not at.exception
    texts = [m.value for m in at.main.markdown]
    assert refer in texts


def test_not_informative_model_warns_and_gives_no_advice(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeServer() as fake:
        fake.models[1] |= {"informative": False, "advice_note": NOT_INFORMATIVE_ADVICE}
        at = _app(monkeypatch, fake)
        at.sidebar.radio(key="task").set_value("fundus").run()
        # The warning is the backend's note on the model, printed as it comes.
        assert [w.value for w in at.sidebar.warning] == [NOT_INFORMATIVE_ADVICE]
        _files(at, "fundus_left.png")
        # The referral box: a warning, titled "no advice", with the backend's advice and the note.
        [alert] = [w.value for w in at.main.warning]
        assert alert.startswith(f"**{HEADLINES['not_informative']}**")
        assert NOT_INFORMATIVE_ADVICE in alert
        assert any(NOTE in c for c in _captions(at))
        assert not at.main.error and not at.main.success
        # The prediction itself is still shown.
        assert [m.value for m in at.metric if m.label == "Predicted class"] == ["Moderate"]
        # Auto-detect lists the default models: the non-informative one is flagged there too.
        at.sidebar.radio(key="task").set_value("auto").run()
        assert [w.value for w in at.sidebar.warning] == [NOT_INFORMATIVE_ADVICE]
        at.switch_page("app_pages/models.py").run()
    assert not at.exception
    assert NOT_INFORMATIVE_ADVICE in [w.value for w in at.main.warning]


def test_every_page_shows_the_backends_disclaimer(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeServer() as fake:
        at = _app(monkeypatch, fake)
        assert [i.value for i in at.main.info] == [NOTE]
        for page in ("app_pages/models.py", "app_pages/exam.py"):
            at.switch_page(page).run()
            assert not at.exception
            assert [i.value for i in at.main.info] == [NOTE], page


def test_an_older_backend_gets_no_words_typed_by_the_ui(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the contract's words (headline, disclaimer, operating_point_text) the UI shows the advice and
    the figures it has, and writes none of the missing words itself."""
    with FakeServer() as fake:
        fake.contract_words = False
        at = _files(_app(monkeypatch, fake), "scan.png", "dark.png")
        assert not at.exception and not at.main.info, "no disclaimer of the UI's own"
        assert "**Referral thresholds**" not in [m.value for m in at.sidebar.markdown]
        assert [e.label for e in at.main.expander] == ["scan.png: DRUSEN (60%)", "dark.png: not gradable"]
        [alert] = [w.value for w in at.main.warning]
        expected = oct_referral(fake.oct_probs)
        assert alert == f"{expected['advice']}  \n{expected['reason']}"
        # The note still comes with every referral (an older backend sends it): shown beside the advice.
        assert any(NOTE in c for c in _captions(at))
        at.switch_page("app_pages/models.py").run()
    assert not at.exception and not at.main.info


def test_exam_page_prints_the_backends_words_per_patient_and_eye(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeServer() as fake:
        at = _app(monkeypatch, fake)
        at.switch_page("app_pages/exam.py").run()
        files = [("r.png", png_bytes(16), "image/png"), ("l_dark.png", png_bytes(17), "image/png")]
        at.file_uploader(key="exam_uploads").set_value(files).run()
        at.selectbox(key="eye_0").set_value("Right eye (OD)")
        at.selectbox(key="eye_1").set_value("Left eye (OS)")
        at.button[0].click().run()
        assert not at.exception, [e.value for e in at.exception]
        [req] = fake.calls("/predict/exam")
    assert [v[1] for v in req.fields["laterality"]] == [b"right", b"left"]
    assert [h.value for h in at.subheader] == ["Right eye (OD)", "Left eye (OS)"]
    refer, ungradable = HEADLINES["refer"], HEADLINES["ungradable"]
    assert [w.value for w in at.main.warning] == [
        f"**Patient: {refer}.** Refer to an ophthalmologist: referable (moderate or worse) diabetic retinopathy "
        "suspected.  \nP(grade >= 2) = 0.70 >= 0.23",
        f"**{refer}.** Refer to an ophthalmologist: referable (moderate or worse) diabetic retinopathy suspected.",
        f"**{ungradable}.** {UNGRADABLE_ADVICE}",
    ]
    assert at.main.dataframe[0].value["referral"].tolist() == ["refer", "ungradable"]
    assert "Exam report (PDF)" in [b.label for b in at.get("download_button")]


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
