"""The pure text of the UI (``frontend.text``, ``frontend.catalog``), without Streamlit: numbers and labels
formatted, and the backend's words placed as they came, never written here."""

from __future__ import annotations

import subprocess
import sys

from frontend import text
from frontend.answers import GateInfo, Prediction, Referral
from frontend.catalog import auto_model, disclaimer, task_defaults
from frontend.errors import BackendError
from frontend.exam_answer import ExamEye, ExamPatient
from frontend.model_info import ModelInfo
from retina.paths import REPO_ROOT
from tests.frontend.fake_backend import DARK_REASONS, DR, FUNDUS_REFER_POINT, HEADLINES, NOTE, OCT, OPERATING_POINT_TEXT


def _ref(level: str, headline: bool = True) -> Referral:
    return Referral(
        level=level,
        headline=HEADLINES.get(level, "") if headline else "",
        advice=f"advice for {level}",
        reason="P = 0.7 >= 0.5",
        note=NOTE,
    )


def _dark(headline: bool = True) -> Prediction:
    gate = GateInfo("oct", gradable=False, reasons=tuple(DARK_REASONS))
    ref = _ref("ungradable", headline)
    return Prediction("m", "1", "oct", None, None, None, gradable=False, referral=ref, gate=gate)


def test_the_pure_modules_import_without_streamlit() -> None:
    code = (
        "import sys\n"
        "import frontend.text, frontend.tables, frontend.catalog, frontend.uploads\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] == 'streamlit')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_operating_point_lines_are_the_backends_sentences_alone() -> None:
    # The point's checks on other sets are in the backend's sentence; the UI adds no figures of its own
    # (it used to print each check a second time, in its own format).
    model = ModelInfo(
        id="dr",
        task="fundus",
        classes=tuple(DR),
        operating_points={"refer": FUNDUS_REFER_POINT},
        served_thresholds={"refer": 0.4, "urgent": 0.5},
        operating_point_text=OPERATING_POINT_TEXT["fundus-test"],
    )
    assert text.operating_point_lines(model) == [
        [OPERATING_POINT_TEXT["fundus-test"]["refer"]],
        [OPERATING_POINT_TEXT["fundus-test"]["urgent"]],
    ]


def test_an_older_backend_without_sentences_gets_no_operating_point_lines() -> None:
    # No sentence of its own: the served thresholds and fitted points alone give no line.
    older = ModelInfo(
        id="dr", task="fundus", operating_points={"refer": FUNDUS_REFER_POINT}, served_thresholds={"refer": 0.23}
    )
    assert text.operating_point_lines(older) == []


def test_referral_markdown_places_the_backends_words() -> None:
    pred = Prediction("m", "1", "oct", "DRUSEN", 0.6, {"DRUSEN": 0.6}, referral=_ref("routine"))
    assert text.referral_markdown(pred) == "**Routine referral**  \nadvice for routine  \nP = 0.7 >= 0.5"
    # An older backend without a headline: the advice alone, no title typed by the UI.
    old = Prediction("m", "1", "oct", "DRUSEN", 0.6, {"DRUSEN": 0.6}, referral=_ref("routine", headline=False))
    assert text.referral_markdown(old) == "advice for routine  \nP = 0.7 >= 0.5"
    # A site profile names itself; the model's own points say nothing.
    site = Referral(level="refer", headline="H", advice="A", reason="R", profile="clinic-a")
    sited = Prediction("m", "1", "fundus", "Moderate", 0.4, {"Moderate": 0.4}, referral=site)
    assert text.referral_markdown(sited).endswith("site profile **clinic-a** (this clinic's own operating points).")
    # Ungradable: the backend's words, then the gate's reasons.
    assert text.referral_markdown(_dark()) == (
        "**Not gradable**  \nadvice for ungradable\n\nWhy:" + "".join(f"\n- {r}" for r in DARK_REASONS)
    )
    no_policy = Prediction("m", "1", "oct", "DRUSEN", 0.6, {"DRUSEN": 0.6})
    assert text.referral_markdown(no_policy) == ""


def test_calibration_text() -> None:
    cal = {"method": "temperature", "temperature": 1.234, "fitted_on": "val", "ece_before": 0.0812, "ece_after": 0.02}
    m = ModelInfo(id="m", task="oct", temperature=1.234, calibration=cal)
    assert text.calibration_text(m) == "Temperature scaling (T = 1.23, fitted on val): ECE 0.081 → 0.020"
    # The backend's temperature when the block has none; only ECE after.
    m = ModelInfo(id="m", task="oct", temperature=2.0, calibration={"ece_after": 0.05})
    assert text.calibration_text(m) == "Temperature scaling (T = 2.00): ECE 0.050"
    assert text.calibration_text(ModelInfo(id="m", task="oct", temperature=1.0)) == (
        "Not calibrated (raw softmax probabilities)."
    )
    assert text.calibration_text(ModelInfo(id="m", task="oct")).startswith("Not calibrated")


def test_result_summary() -> None:
    probs = dict(zip(OCT, [0.1, 0.2, 0.6, 0.1], strict=True))
    pred = Prediction("m", "1", "oct", "DRUSEN", 0.6, probs, referral=_ref("routine"))
    assert text.result_summary(pred) == "DRUSEN (60%) · Routine referral"
    informative = Prediction("m", "1", "fundus", "No DR", 0.5, {"No DR": 0.5}, referral=_ref("not_informative"))
    assert text.result_summary(informative) == "No DR (50%) · No advice (model not informative)"
    assert text.result_summary(_dark()) == "Not gradable"
    # An older backend: no headline, so nothing of the referral in the line.
    old = Prediction("m", "1", "oct", "DRUSEN", 0.6, probs, referral=_ref("routine", headline=False))
    assert text.result_summary(old) == "DRUSEN (60%)"
    assert text.result_summary(_dark(headline=False)) == "not gradable"
    assert text.result_summary(BackendError("wrong_modality", "a fundus photo")) == (
        "Wrong image type for this model: a fundus photo"
    )
    assert text.result_summary(BackendError("invalid_image", "truncated")) == "truncated"
    # With the chosen model the wrong-modality line speaks of images and tasks, not query parameters.
    api = "this looks like a colour fundus photo, but model 'oct-x' reads OCT B-scans: send it with model=fundus"
    oct_model = ModelInfo(id="oct-x", task="oct")
    assert text.result_summary(BackendError("wrong_modality", api), oct_model) == (
        "Wrong image type for this model: This looks like a colour fundus photo; the OCT model reads OCT "
        "B-scans only, so nothing was predicted."
    )


def test_refusal_text_names_the_task_to_pick() -> None:
    err = BackendError("wrong_modality", "this looks like an OCT B-scan ... send it with model=oct (model oct-x)")
    what, hint = text.refusal_text(err, ModelInfo(id="dr-x", task="fundus"))
    assert what.startswith("This looks like an OCT B-scan; the Fundus model reads colour fundus photos only")
    assert hint == f"Choose **OCT** under Task in the sidebar, or {text.AUTO_LABEL}."
    for words in ("model=", "oct-x", "dr-x"):
        assert words not in what + hint
    # Other refusals keep the backend's own words and the gate's hint; a task the UI does not know too.
    assert text.refusal_text(BackendError("not_retinal_image", "a cat"))[0] == "a cat"
    assert text.refusal_text(err, ModelInfo(id="x", task="other"))[0] == err.message


def test_exam_lines_print_what_the_backend_decided() -> None:
    ref = _ref("refer")
    eye = ExamEye("right", 2, 1, 3, True, "Moderate", 0.714, ref)
    assert text.eye_summary(eye) == "1 of 2 images gradable; decided by image 3 (Moderate, 0.71)"
    assert text.eye_markdown(eye) == f"**{HEADLINES['refer']}.** advice for refer"
    ungradable = ExamEye("left", 1, 0, None, False, None, None, _ref("ungradable", headline=False))
    assert text.eye_summary(ungradable) == "0 of 1 images gradable"
    assert text.eye_markdown(ungradable) == "advice for ungradable"
    patient = ExamPatient(level="refer", headline="Refer", advice="Go.", reason="right eye", deciding_eye="right")
    assert text.patient_markdown(patient) == "**Patient: Refer.** Go.  \nright eye"
    assert text.patient_markdown(ExamPatient(level="refer", advice="Go.")) == "**Patient:** Go."


def test_site_caption_and_numbers() -> None:
    site = {"profile": {"n_images": 150, "n_referable": 60, "temperature": 1.4, "refer": {"threshold": 0.31}}}
    assert text.site_caption(site) == "Fitted on 150 photos (60 referable); refer threshold 0.310; temperature 1.40."
    assert (text.percent(0.7142), text.percent(None), text.percent(0.5, 0)) == ("71.4%", "0.0%", "50%")


def test_auto_model_stands_for_the_task_defaults() -> None:
    models = [
        ModelInfo(id="oct-a", task="oct", version="1", default=False),
        ModelInfo(id="oct-b", task="oct", version="2", default=True, disclaimer=NOTE),
        ModelInfo(id="dr-a", task="fundus", version="3", default=True, loaded=False, error="missing"),
    ]
    assert [m.id for m in task_defaults(models)] == ["oct-b", "dr-a"]
    auto = auto_model(models)
    assert (auto.id, auto.task, auto.loaded, auto.disclaimer) == ("auto", "auto", True, NOTE)
    # The cache key changes when either default model does.
    assert auto.version == "oct-b@2+dr-a@3"
    assert "`oct-b` (v2)" in auto.description and "dr-a" not in auto.description
    assert not auto_model(models[:1]).loaded
    assert text.model_label(auto) == "auto-detect" and text.model_label(models[0]) == "oct-a v1"
    # The page's disclaimer is the backend's; none from an older backend.
    assert disclaimer(models) == NOTE and disclaimer(models[:1]) == ""


def test_image_check_line_shows_the_learned_quality_grade() -> None:
    gate = GateInfo.from_json({"modality": "fundus", "gradable": True, "quality_grade": "Usable"})
    pred = Prediction("m", "1", "fundus", "No DR", 0.5, {"No DR": 0.5}, referral=_ref("rescreen"), gate=gate)
    assert text.gate_text(pred) == "Image check: colour fundus photo, gradable, quality Usable"
    no_grade = Prediction("m", "1", "oct", "NORMAL", 0.5, {"NORMAL": 0.5}, gate=GateInfo("oct"))
    assert text.gate_text(no_grade) == "Image check: OCT B-scan, gradable"
