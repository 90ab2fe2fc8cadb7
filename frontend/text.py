"""Pure text of the UI: numbers, intervals, labels and one-line summaries, formatted for the pages.

No Streamlit here (tests import it bare) and no referral words: a referral's headline, advice and
disclaimer, and a model's operating-point sentences, are the backend's (``retina/referral.py`` writes
them) and are only placed here, never written. What is written here is the UI's own vocabulary:
names of tasks and image kinds, what to do about a refused upload, and figures as numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from frontend.answers import Prediction, Referral, VolumeResult
from frontend.errors import BackendError
from frontend.exam_answer import ExamEye, ExamPatient
from frontend.model_info import AUTO_MODEL, ModelInfo

# Display names of the backend's tasks, in the order the UI offers them.
TASK_LABELS: dict[str, str] = {"oct": "OCT", "fundus": "Fundus"}
AUTO_LABEL = "Auto-detect (OCT or fundus)"
# Readable names of the fundus model's derived binary outputs (``Prediction.derived``).
DERIVED_LABELS = {"referable": "Referable DR (grade ≥ 2)", "any": "Any DR (grade ≥ 1)"}
MODALITY_NAMES = {"oct": "OCT B-scan", "fundus": "colour fundus photo", "other": "not a retinal image"}
# What each task's models read, for the wrong-modality message in a clinician's words (the API's detail
# speaks of query parameters: "send it with model=oct (model oct-resnet18)").
TASK_IMAGES = {"oct": ("an OCT B-scan", "OCT B-scans"), "fundus": ("a colour fundus photo", "colour fundus photos")}
# The image gate's 422 codes -> headline, and what the user can do about it.
GATE_TITLES: dict[str, tuple[str, str]] = {
    "not_retinal_image": ("Not a retinal image", "Upload an OCT B-scan or a colour fundus photo."),
    "wrong_modality": (
        "Wrong image type for this model",
        f"Pick the matching task in the sidebar, or {AUTO_LABEL}.",
    ),
    "ungradable_image": ("Image not gradable", "Retake the image."),
}
# A model flagged ``informative: false`` by the backend (its answers carry the level ``not_informative``).
EYE_CHOICES: dict[str, str] = {
    "From the DICOM header or the file name": "",
    "Right eye (OD)": "right",
    "Left eye (OS)": "left",
}
EYE_TITLES = {"right": "Right eye (OD)", "left": "Left eye (OS)"}


# ----------------------------------------------------------------------------- numbers


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def percent(p: float | None, digits: int = 1) -> str:
    """``0.714`` -> ``71.4%`` (``digits`` decimals); ``None`` -> ``0.0%`` as the metric tiles always did."""
    return f"{p or 0.0:.{digits}%}"


# ----------------------------------------------------------------------------- models


def model_facts(model: ModelInfo) -> str:
    """One line: architecture, input, classes."""
    colour = {1: "grayscale", 3: "RGB"}.get(model.channels or 0, f"{model.channels} ch")
    size = f"{model.input_size} px {colour}" if model.input_size else colour
    return f"{model.arch} · input {size} · {len(model.classes)} classes"


def model_label(model: ModelInfo) -> str:
    """``oct-resnet18 v1.0.0``, or ``auto-detect`` for the auto choice."""
    return "auto-detect" if model.id == AUTO_MODEL else f"{model.id} v{model.version}"


def calibration_text(model: ModelInfo) -> str:
    """One line on the probability calibration, e.g.
    ``Temperature scaling (T = 1.23, fitted on val): ECE 0.081 → 0.023``.

    ECE is the expected calibration error in [0, 1] (lower: probabilities closer to observed
    frequencies), measured before and after the temperature was applied.
    """
    cal = model.calibration or {}
    temperature = cal.get("temperature", model.temperature)
    before, after = cal.get("ece_before"), cal.get("ece_after")
    if not cal and (temperature is None or temperature == 1.0):
        return "Not calibrated (raw softmax probabilities)."
    method = cal.get("method")
    name = "Temperature scaling" if method in (None, "temperature") else str(method)
    facts = [f"T = {temperature:.2f}"] if is_number(temperature) else []
    if cal.get("fitted_on"):
        facts.append(f"fitted on {cal['fitted_on']}")
    text = name + (f" ({', '.join(facts)})" if facts else "")
    if is_number(before) and is_number(after):
        text += f": ECE {before:.3f} → {after:.3f}"
    elif is_number(after):
        text += f": ECE {after:.3f}"
    return text


def operating_point_lines(model: ModelInfo) -> list[list[str]]:
    """Per referral operating point the backend states, its lines: the backend's sentence, as it is.

    The sentence (``operating_point_text``) already carries the point's sensitivity and specificity
    where it was chosen and on the other sets it was checked on, and says when a setting moved the
    served threshold; the UI adds no figures of its own. An older backend that sends none gets no lines.
    """
    return [[sentence] for sentence in model.operating_point_text.values()]


# ----------------------------------------------------------------------------- site profiles


def _rates(fit: Any) -> str:
    if not isinstance(fit, Mapping) or fit.get("sensitivity") is None:
        return ""
    s_lo, s_hi = fit.get("sensitivity_ci95") or (None, None)
    c_lo, c_hi = fit.get("specificity_ci95") or (None, None)
    text = f"sensitivity {fit['sensitivity']:.2f}"
    text += f" [{s_lo:.2f}, {s_hi:.2f}]" if s_lo is not None and s_hi is not None else ""
    text += f", specificity {fit['specificity']:.2f}"
    text += f" [{c_lo:.2f}, {c_hi:.2f}]" if c_lo is not None and c_hi is not None else ""
    return text


def site_caption(site: Mapping[str, Any]) -> str:
    """One line on a site profile: where it was fitted, its ``refer`` threshold and how that did there."""
    p = site.get("profile") or {}
    refer = p.get("refer") or {}
    parts = [f"Fitted on {p.get('n_images', '?')} photos ({p.get('n_referable', '?')} referable)"]
    if refer.get("threshold") is not None:
        parts.append(f"refer threshold {refer['threshold']:.3f}")
    if rates := _rates(refer.get("fit")):
        parts.append(rates + " on the site's photos")
    if p.get("temperature") is not None:
        parts.append(f"temperature {p['temperature']:.2f}")
    return "; ".join(parts) + "."


def profile_text(profile: str) -> str | None:
    """Which site profile decided a referral (nothing for the model's own points, ``default``)."""
    if not profile or profile == "default":
        return None
    return f"Decided by the site profile **{profile}** (this clinic's own operating points)."


# ----------------------------------------------------------------------------- answers


def gate_text(pred: Prediction) -> str | None:
    """``Image check: colour fundus photo, gradable, quality Good``; ``None`` when the backend's gate is off."""
    if pred.gate is None:
        return None
    what = MODALITY_NAMES.get(pred.gate.modality, pred.gate.modality)
    grade = f", quality {pred.gate.quality_grade}" if pred.gate.quality_grade else ""
    return f"Image check: {what}, " + ("gradable" if pred.gate.gradable else "not gradable") + grade


def _lines(*parts: str | None) -> str:
    # Markdown line breaks: two spaces before the newline.
    return "  \n".join(p for p in parts if p)


def _headed(ref: Referral) -> str:
    """The backend's headline in bold above its advice (the advice alone when there is no headline)."""
    return _lines(f"**{ref.headline}**" if ref.headline else None, ref.advice)


def referral_markdown(pred: Prediction) -> str:
    """The referral box of one answer: the backend's headline, advice and rule, or for an ungradable image
    the backend's words and the gate's reasons. Empty when the answer carries nothing to say."""
    ref = pred.referral
    if pred.gradable:
        if ref is None:
            return ""
        return _lines(_headed(ref), ref.reason, profile_text(ref.profile))
    reasons = list(pred.reasons) or ([ref.reason] if ref is not None and ref.reason else [])
    why = "".join(f"\n- {r}" for r in reasons)
    head = _headed(ref) if ref is not None else ""
    return "\n\n".join(p for p in (head, f"Why:{why}" if why else "") if p)


def refusal_text(err: BackendError, model: ModelInfo | None = None) -> tuple[str, str]:
    """``(what happened, what to do)`` for a refused image, in the reader's words, not the API's.

    A wrong-modality refusal of the chosen ``model`` names the kind of image seen and the task to pick
    (there are two modalities, so the other one is what the gate saw); other refusals keep the
    backend's detail, with the gate's hint when it is one of its codes.
    """
    hint = GATE_TITLES.get(err.code, ("", ""))[1]
    if err.code == "wrong_modality" and model is not None and model.task in TASK_IMAGES:
        other = next(t for t in TASK_IMAGES if t != model.task)
        seen, reads = TASK_IMAGES[other][0], TASK_IMAGES[model.task][1]
        task, other_task = TASK_LABELS.get(model.task, model.task), TASK_LABELS.get(other, other)
        return (
            f"This looks like {seen}; the {task} model reads {reads} only, so nothing was predicted.",
            f"Choose **{other_task}** under Task in the sidebar, or {AUTO_LABEL}.",
        )
    return err.message, hint


def result_summary(result: Prediction | VolumeResult | BackendError, model: ModelInfo | None = None) -> str:
    """One line per image for the collapsed cards: label and confidence with the backend's referral headline,
    or why it was refused (:func:`refusal_text` for the chosen ``model``)."""
    if isinstance(result, VolumeResult):
        return f"volume of {result.n_frames} B-scans: " + result_summary(result.prediction, model)
    if isinstance(result, BackendError):
        title = GATE_TITLES.get(result.code, ("",))[0]
        text = refusal_text(result, model)[0]
        return f"{title}: {text}" if title else text
    headline = result.referral.headline if result.referral else ""
    if not result.gradable:
        return headline or "not gradable"
    text = f"{result.label} ({percent(result.confidence, 0)})"
    return text + (f" · {headline}" if headline else "")


def volume_summary(vol: VolumeResult) -> str:
    """``**OCT volume**: 3 B-scans, 2 graded, 1 skipped (ungradable or not OCT). Deciding B-scans: 1.``"""
    skipped = vol.n_ungradable + vol.n_not_oct
    deciding = ", ".join(str(i) for i in vol.deciding_frames) or "none"
    return (
        f"**OCT volume**: {vol.n_frames} B-scans, {vol.n_graded} graded"
        + (f", {skipped} skipped (ungradable or not OCT)" if skipped else "")
        + f". Deciding B-scans: {deciding}."
    )


# ----------------------------------------------------------------------------- exams


def patient_markdown(patient: ExamPatient) -> str:
    """The patient's line: ``**Patient: <headline>.** <advice>`` then the rule that decided it."""
    title = f"Patient: {patient.headline}." if patient.headline else "Patient:"
    return _lines(f"**{title}** {patient.advice}", patient.reason)


def eye_markdown(eye: ExamEye) -> str:
    """One eye's referral: the backend's headline in bold, then its advice."""
    ref = eye.referral
    return f"**{ref.headline}.** {ref.advice}" if ref.headline else ref.advice


def eye_summary(eye: ExamEye) -> str:
    """``"2 of 2 images gradable; decided by image 1 (Moderate, 0.71)"`` for one eye's answer."""
    head = f"{eye.n_gradable} of {eye.n_images} images gradable"
    if eye.deciding_image is None:
        return head
    conf = f", {eye.confidence:.2f}" if eye.confidence is not None else ""
    return f"{head}; decided by image {eye.deciding_image} ({eye.label}{conf})"
