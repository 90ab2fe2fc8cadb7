"""The one-page PDF report: built from real images, read back with pypdf, rendered with pypdfium2."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pypdf
import pypdfium2 as pdfium
import pytest
from PIL import Image, UnidentifiedImageError

from backend.app.services.report import ReportInput, build_report, latin1
from retina.cam import overlay
from retina.paths import REPO_ROOT
from retina.preprocessing import get_preset, load_image, prepare
from retina.referral import DISCLAIMER, DISCLAIMER_SHORT, decided_by_text, headline

CREATED = datetime(2026, 11, 22, 10, 15, 3, tzinfo=UTC)
FUNDUS_METRICS = [
    ("Referable-DR ROC AUC (test, 742 images)", "0.725 [0.668, 0.774]"),
    ("Accuracy, 5 grades (test)", "0.722 [0.679, 0.763]"),
]
OCT_METRICS = [("Accuracy (test, 9 images)", "0.889 [0.667, 1.000]")]
# As training/evaluate/thresholds.py stores it in the checkpoint (meta.extra["operating_points"]).
REFER_POINT = {
    "threshold": 0.23,
    "score": "P(Moderate + Severe + Proliferative)",
    "positive": "referable DR (grade >= 2)",
    "target_sensitivity": 0.87,
    "fitted_on": "fundus-train validation split",
    "fit": {
        "sensitivity": 0.871,
        "sensitivity_ci95": [0.803, 0.924],
        "specificity": 0.553,
        "specificity_ci95": [0.512, 0.594],
        "n": 742,
        "n_positive": 163,
    },
    "checks": {
        "idrid": {
            "sensitivity": 0.802,
            "sensitivity_ci95": [0.718, 0.871],
            "specificity": 0.611,
            "specificity_ci95": [0.497, 0.716],
            "n": 103,
            "n_positive": 61,
        }
    },
}
FIT_TEXT = "sensitivity 0.87 [0.80, 0.92], specificity 0.55 [0.51, 0.59] (n = 742, 163 positive)"
IDRID_TEXT = "on idrid: sensitivity 0.80 [0.72, 0.87], specificity 0.61 [0.50, 0.72] (n = 103, 61 positive)"


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _model_view_and_overlay(path: Path, preset: str) -> tuple[bytes, bytes, bytes]:
    """(raw file bytes, prepared RGB PNG, CAM-style overlay PNG from a Gaussian blob heatmap)."""
    prepared = prepare(load_image(path), get_preset(preset)).convert("RGB")
    rgb = np.asarray(prepared, dtype=np.float32) / 255.0  # (S, S, 3) in [0, 1]
    s = rgb.shape[0]
    yy, xx = np.mgrid[0:s, 0:s]
    heat = np.exp(-((xx - 0.6 * s) ** 2 + (yy - 0.4 * s) ** 2) / (2 * (0.15 * s) ** 2)).astype(np.float32)
    return path.read_bytes(), _png(np.asarray(prepared)), _png(overlay(rgb, heat, 0.5))


@pytest.fixture(scope="module")
def fundus_input(fundus_image: Path) -> ReportInput:
    path = fundus_image
    raw, image, over = _model_view_and_overlay(path, "fundus_224")
    return ReportInput(
        image_png=image,
        overlay_png=over,
        cam_method="gradcam",
        cam_target="Moderate",
        model_id="fundus-test-model",
        model_version="1.2.3",
        task="fundus",
        label="Moderate",
        confidence=0.428,
        probabilities={"No DR": 0.312, "Mild": 0.101, "Moderate": 0.428, "Severe": 0.094, "Proliferative": 0.065},
        derived={"referable": 0.587, "any": 0.688},
        referral={
            "level": "refer",
            "advice": "Refer to an ophthalmologist for a dilated eye examination.",
            "reason": "P(referable DR) = 0.59 >= 0.50",
        },
        gate={
            "modality": "fundus",
            "gradable": True,
            "reasons": [],
            "quality": {"sharpness": 0.71, "brightness": 0.48},
        },
        metrics=FUNDUS_METRICS,
        metrics_source="held-out test split, 371 patients",
        request_id="req-7f3a2b",
        input_sha256=hashlib.sha256(raw).hexdigest(),
        created=CREATED,
        filename=f"/home/someone/uploads/{path.name}",
    )


@pytest.fixture(scope="module")
def oct_input(oct_image: Path) -> ReportInput:
    path = oct_image  # a CNV B-scan
    raw, image, over = _model_view_and_overlay(path, "oct_128")
    return ReportInput(
        image_png=image,
        overlay_png=over,
        cam_method="gradcam++",
        cam_target=None,
        model_id="oct-test-model",
        model_version="0.9.0",
        task="oct",
        label="CNV",
        confidence=0.781,
        probabilities={"CNV": 0.781, "DME": 0.052, "DRUSEN": 0.121, "NORMAL": 0.046},
        derived=None,
        referral={
            "level": "urgent",
            "advice": "Urgent referral to a retina specialist.",
            "reason": "P(CNV)+P(DME) = 0.83 >= 0.50",
        },
        gate={"modality": "oct", "gradable": True, "reasons": [], "quality": {"sharpness": 0.66}},
        metrics=OCT_METRICS,
        metrics_source="patient-disjoint test split",
        request_id="req-0c7d",
        input_sha256=hashlib.sha256(raw).hexdigest(),
        created=CREATED,
        filename=None,
    )


def _read(pdf: bytes) -> tuple[int, str, int]:
    """(page count, text of page 1 with whitespace runs as one space, images on page 1)."""
    assert pdf.startswith(b"%PDF-")
    reader = pypdf.PdfReader(io.BytesIO(pdf))
    page = reader.pages[0]
    return len(reader.pages), " ".join(page.extract_text().split()), len(page.images)


def _render(pdf: bytes, scale: float = 1.0) -> np.ndarray:
    """Page 1 as ``(H, W, 3)`` uint8."""
    doc = pdfium.PdfDocument(pdf)
    try:
        return np.asarray(doc[0].render(scale=scale).to_pil().convert("RGB"))
    finally:
        doc.close()


@pytest.mark.parametrize("case", ["fundus_input", "oct_input"])
def test_report_has_every_part(case: str, request: pytest.FixtureRequest) -> None:
    inp: ReportInput = request.getfixturevalue(case)
    pages, text, images = _read(build_report(inp))
    assert pages == 1
    assert images == 2  # the model's view and the CAM overlay
    assert "RetinaScope report" in text
    assert inp.model_id in text and inp.model_version in text
    for name, p in inp.probabilities.items():
        assert f"{name} {p:.3f}" in text  # each class beside its probability, 3 decimals
    assert inp.referral["advice"] in text
    assert inp.referral["reason"] in text
    assert headline(inp.referral["level"]).upper() in text  # the level's headline when the block brings none
    assert f"referral level: {inp.referral['level']}" in text
    for name, value in inp.metrics:
        assert name in text and value in text
    assert inp.metrics_source in text
    assert "2026-11-22T10:15:03Z" in text
    assert inp.request_id in text
    assert inp.input_sha256 in text
    assert DISCLAIMER in text  # the default: the one disclaimer of retina.referral
    assert f"Modality: {inp.task}" in text and "Gradable: yes" in text


def test_fundus_report_shows_derived_and_only_the_file_base_name(fundus_input: ReportInput) -> None:
    _, text, _ = _read(build_report(fundus_input))
    assert "Referable DR (grade >= 2) 0.587" in text
    assert "Any DR (grade >= 1) 0.688" in text
    assert "sharpness 0.71" in text and "brightness 0.48" in text
    assert f"File {Path(fundus_input.filename).name}" in text
    assert "someone" not in text and "uploads" not in text  # folders of the client's path never printed


def test_no_filename_no_file_field(oct_input: ReportInput) -> None:
    _, text, _ = _read(build_report(oct_input))
    assert "File " not in text
    assert "Grad-CAM++ for the predicted class" in text


def test_windows_path_is_reduced_to_its_base_name(oct_input: ReportInput) -> None:
    inp = dataclasses.replace(oct_input, filename="C:\\Users\\jdoe\\scan 01.png")
    _, text, _ = _read(build_report(inp))
    assert "File scan 01.png" in text and "jdoe" not in text


def test_ungradable_report_lists_reasons_and_no_probability_table(fundus_input: ReportInput) -> None:
    reasons = ["too dark (mean brightness 0.04 < 0.08)", "out of focus (sharpness 0.05 < 0.15)"]
    inp = dataclasses.replace(
        fundus_input,
        overlay_png=None,
        cam_method=None,
        cam_target=None,
        label=None,
        confidence=None,
        probabilities=None,
        derived=None,
        referral={"level": "ungradable", "advice": "Retake the photograph.", "reason": "image check: ungradable"},
        gate={"modality": "fundus", "gradable": False, "reasons": reasons, "quality": {"brightness": 0.04}},
    )
    pages, text, images = _read(build_report(inp))
    assert pages == 1
    assert images == 1  # no overlay
    assert headline("ungradable").upper() in text and "Retake the photograph." in text
    assert "Not graded" in text and "Gradable: no" in text
    for reason in reasons:
        assert reason in text
    assert "Probability" not in text
    for name in fundus_input.probabilities:
        assert name not in text
    assert "Referable DR (grade" not in text
    assert fundus_input.model_id in text and DISCLAIMER in text


def test_non_latin1_texts_do_not_crash(oct_input: ReportInput) -> None:
    probs = {"Drusen–α": 0.5, "Ödem ő": 0.3, "網膜": 0.15, "CNV ≥ 2": 0.05}
    inp = dataclasses.replace(
        oct_input,
        label="Drusen–α",
        probabilities=probs,
        cam_target="Drusen–α",
        referral={"level": "routine", "advice": "Routine referral — “soon” ✓", "reason": "P ≥ 0.5"},
        metrics=[("AUC – test ✓", "0.9 ± 0.1")],
        disclaimer=DISCLAIMER + " 研究用",
    )
    pages, text, _ = _read(build_report(inp))
    assert pages == 1
    assert "Drusen-? 0.500" in text  # en dash -> "-", alpha -> "?"
    assert "Ödem o 0.300" in text  # latin-1 letters kept, others lose their accent
    assert "?? 0.150" in text
    assert "CNV >= 2 0.050" in text
    assert 'Routine referral - "soon" ?' in text
    assert "0.9 ± 0.1" in text


def test_latin1_helper() -> None:
    assert latin1("a\tb\n\nc") == "a b c"  # one line
    assert latin1("x\x00y\x9f") == "x?y?"  # control characters (C0 and C1) are not printable
    assert latin1("é ñ µ ß") == "é ñ µ ß"  # latin-1 stays as it is
    assert latin1("ő ł ≤ …") == "o ? <= ..."
    assert latin1(0.5) == "0.5"
    for s in ["Drusen–α", "🙂", "ǅ", "\u0301", "ﬁ"]:
        latin1(s).encode("latin-1")  # never raises


def test_ten_classes_and_long_advice_stay_on_one_page(oct_input: ReportInput) -> None:
    rng = np.random.default_rng(0)
    names = [f"Class {i} name" for i in range(10)]
    probs = dict(zip(names, (float(p) for p in rng.dirichlet(np.ones(10))), strict=True))
    advice = "Start of the advice. " + "This sentence keeps the advice going on and on. " * 40
    inp = dataclasses.replace(
        oct_input,
        probabilities=probs,
        label=max(probs, key=probs.__getitem__),
        derived={"referable": 0.4, "any": 0.6},
        referral={"level": "urgent", "advice": advice, "reason": "P(CNV)+P(DME) = 0.83 >= 0.50 " * 10},
        metrics=[(f"Metric {i} with a fairly long descriptive name", f"0.{i}00 [0.1, 0.9]") for i in range(8)],
    )
    pages, text, images = _read(build_report(inp))
    assert pages == 1 and images == 2
    for name, p in probs.items():
        assert f"{name} {p:.3f}" in text
    assert "Start of the advice." in text
    assert inp.input_sha256 in text and DISCLAIMER in text


def test_extreme_inputs_still_one_page(oct_input: ReportInput) -> None:
    names = [f"Label number {i}" for i in range(40)]
    probs = {n: (i + 1) / 820 for i, n in enumerate(names)}  # sums to 1
    word = "lengthy "
    inp = dataclasses.replace(
        oct_input,
        probabilities=probs,
        label=names[-1],
        derived={"referable": 0.5, "any": 0.7},
        referral={"level": "observation", "advice": word * 500, "reason": word * 200},
        gate={
            "modality": "oct",
            "gradable": True,
            "reasons": [word * 30] * 20,
            "quality": {f"q{i}": 0.5 for i in range(60)},
        },
        metrics=[(word * 20, "0.5")] * 30,
        metrics_source=word * 100,
        disclaimer=DISCLAIMER + " " + word * 200,
    )
    pages, text, images = _read(build_report(inp))
    assert pages == 1 and images == 2
    assert f"{names[-1]} {probs[names[-1]]:.3f}" in text  # the most probable class is kept
    assert "less probable classes" in text
    assert f"{DISCLAIMER_SHORT}." in text and inp.input_sha256 in text


def test_rendered_page_is_not_blank_and_coloured_by_level(fundus_input: ReportInput) -> None:
    red_tint, green_tint = (253, 236, 234), (232, 245, 233)

    def count(img: np.ndarray, colour: tuple[int, int, int]) -> int:
        return int(np.all(img == np.array(colour, np.uint8), axis=-1).sum())

    urgent = _render(build_report(dataclasses.replace(fundus_input, referral={"level": "urgent", "advice": "a"})))
    assert abs(urgent.shape[0] - 842) <= 1 and abs(urgent.shape[1] - 595) <= 1  # A4 at 72 dpi
    assert urgent.std() > 30  # images, text and boxes, not an empty page
    observation = _render(
        build_report(dataclasses.replace(fundus_input, referral={"level": "observation", "advice": "a"}))
    )
    assert count(urgent, red_tint) > 5000 and count(urgent, green_tint) == 0
    assert count(observation, green_tint) > 5000 and count(observation, red_tint) == 0


def _refer(inp: ReportInput, threshold: float | None = 0.23, **points: dict) -> ReportInput:
    referral = {
        "level": "refer",
        "advice": "Refer to an ophthalmologist for a dilated eye examination.",
        "reason": "P(grade >= 2) = 0.59 >= 0.23",
        "threshold": threshold,
    }
    return dataclasses.replace(inp, referral=referral, operating_points=points)


def _point_text(inp: ReportInput) -> str:
    """The operating-point sentence the PDF prints for ``inp`` (written by retina.referral)."""
    return decided_by_text(inp.task, inp.referral, inp.operating_points)


def test_report_prints_the_served_operating_point(fundus_input: ReportInput) -> None:
    inp = _refer(fundus_input, refer=REFER_POINT)
    expected = (
        f"Refer when P(grade >= 2) >= 0.230, chosen on fundus-train validation split: {FIT_TEXT}. "
        f"At this threshold {IDRID_TEXT}."
    )
    assert _point_text(inp) == expected
    pages, text, images = _read(build_report(inp))
    assert pages == 1 and images == 2
    assert "Rule: P(grade >= 2) = 0.59 >= 0.23" in text
    assert "Refer when P(grade >= 2) >= 0.230, chosen on fundus-train validation split" in text
    assert FIT_TEXT in text and IDRID_TEXT in text
    # A rescreen answer was decided by the same point: its figures are printed too.
    rescreen = dataclasses.replace(inp, referral={**inp.referral, "level": "rescreen_12_months"})
    assert _point_text(rescreen) == expected


def test_report_operating_point_overridden_or_absent(fundus_input: ReportInput) -> None:
    over = _point_text(_refer(fundus_input, 0.5, refer=REFER_POINT))
    assert over.startswith(
        "Refer when P(grade >= 2) >= 0.500 (service setting RETINA_REFERRAL_FUNDUS_REFER), overriding the "
        "operating point 0.230 chosen on fundus-train validation split: "
    )
    assert f"{FIT_TEXT}. At 0.230 {IDRID_TEXT}." in over
    # No operating point stored (or only another one): the served threshold alone.
    for inp in (_refer(fundus_input, 0.5), _refer(fundus_input, 0.5, urgent=REFER_POINT)):
        assert _point_text(inp) == (
            "Refer when P(grade >= 2) >= 0.500 (service default or setting; no validated operating point in the "
            "checkpoint)."
        )
        assert "Refer when P(grade >= 2) >= 0.500 (service default or setting" in _read(build_report(inp))[1]
    # No threshold decided the answer: nothing printed (the fixtures carry none).
    assert _point_text(_refer(fundus_input, None, refer=REFER_POINT)) == ""
    assert " when P(" not in _read(build_report(fundus_input))[1]
    # Hand-edited checkpoints: missing or non-finite figures are left out, never crash.
    odd = {"threshold": 0.23, "fit": {"sensitivity": float("nan"), "specificity": 0.5}, "checks": {"x": None}}
    assert _point_text(_refer(fundus_input, refer=odd)) == "Refer when P(grade >= 2) >= 0.230: specificity 0.50."


def test_report_prints_the_headline_it_is_given(fundus_input: ReportInput) -> None:
    inp = dataclasses.replace(fundus_input, referral={**fundus_input.referral, "headline": "Given headline"})
    assert "GIVEN HEADLINE" in _read(build_report(inp))[1]


def test_not_informative_report(fundus_input: ReportInput) -> None:
    advice = "No advice: this model's validated accuracy is not distinguishable from chance."
    referral = {
        "level": "not_informative",
        "advice": advice,
        "reason": "the model's validated balanced accuracy interval includes chance",
        "probability": None,
        "threshold": None,
    }
    inp = dataclasses.replace(fundus_input, referral=referral, operating_points={"refer": REFER_POINT})
    assert headline("not_informative") == "No advice (model not informative)"
    pages, text, _ = _read(build_report(inp))
    assert pages == 1
    assert "NO ADVICE (MODEL NOT INFORMATIVE)" in text and advice in text
    assert "referral level: not_informative" in text
    assert " when P(" not in text and "service default" not in text
    grey = (238, 238, 238)
    assert int(np.all(_render(build_report(inp)) == np.array(grey, np.uint8), axis=-1).sum()) > 5000


def test_operating_point_and_extreme_inputs_still_one_page(oct_input: ReportInput) -> None:
    word = "lengthy "
    point = REFER_POINT | {
        "fitted_on": word * 60,
        "checks": {f"set{i} " + word * 5: REFER_POINT["fit"] for i in range(10)},
    }
    inp = dataclasses.replace(
        oct_input,
        referral={"level": "routine", "advice": word * 500, "reason": word * 200, "threshold": 0.23},
        operating_points={"routine": point},
        metrics=[(word * 20, "0.5")] * 30,
        metrics_source=word * 100,
        disclaimer=DISCLAIMER + " " + word * 200,
    )
    pages, text, images = _read(build_report(inp))
    assert pages == 1 and images == 2
    assert "Routine referral when P(CNV) + P(DME) + P(DRUSEN) >= 0.230" in text
    assert f"{DISCLAIMER_SHORT}." in text and inp.input_sha256 in text


def test_output_is_deterministic_apart_from_the_timestamp(fundus_input: ReportInput) -> None:
    first, second = build_report(fundus_input), build_report(fundus_input)
    assert first == second
    later = build_report(dataclasses.replace(fundus_input, created=CREATED + timedelta(seconds=1)))
    assert later != first
    assert "2026-11-22T10:15:04Z" in _read(later)[1]


def test_large_and_rgba_images_are_embedded_downscaled(oct_input: ReportInput) -> None:
    rng = np.random.default_rng(1)
    big = _png(rng.integers(0, 256, (1500, 1000, 3), dtype=np.uint8))
    rgba = _png(rng.integers(0, 256, (64, 64, 4), dtype=np.uint8))
    reader = pypdf.PdfReader(io.BytesIO(build_report(dataclasses.replace(oct_input, image_png=big, overlay_png=rgba))))
    sizes = sorted(im.image.size for im in reader.pages[0].images)
    assert sizes == [(64, 64), (512, 768)]
    assert "(1000 x 1500 px)" in " ".join(reader.pages[0].extract_text().split())  # caption: the size given


def test_undecodable_image_raises(oct_input: ReportInput) -> None:
    with pytest.raises(UnidentifiedImageError):
        build_report(dataclasses.replace(oct_input, image_png=b"not a png"))


def _render_pdf_script():
    spec = importlib.util.spec_from_file_location("render_pdf", REPO_ROOT / "scripts" / "render_pdf.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_render_pdf_script(oct_input: ReportInput, tmp_path: Path) -> None:
    script = _render_pdf_script()
    pdf = tmp_path / "r.pdf"
    pdf.write_bytes(build_report(oct_input))
    assert script.main([str(pdf), str(tmp_path / "out" / "r.png"), "--scale", "0.5"]) == 0
    with Image.open(tmp_path / "out" / "r.png") as im:
        assert im.size == (298, 421)
        assert np.asarray(im.convert("L")).std() > 10
    assert script.main([str(pdf), str(tmp_path / "p2.png"), "--page", "2"]) == 1  # there is one page only
    assert script.main([str(tmp_path / "missing.pdf"), str(tmp_path / "m.png")]) == 1
