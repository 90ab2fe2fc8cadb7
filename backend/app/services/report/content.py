"""What one report shows: :class:`ReportInput` (the route fills it, the layout only draws it) and the
model's headline figures chosen for one page (:func:`report_metrics`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from retina.checkpoint import CheckpointMeta
from retina.figures import Evaluation, figure_text, model_figures
from retina.referral import DISCLAIMER


@dataclass(frozen=True)
class VolumeSummary:
    """The whole OCT volume behind a one-B-scan report (``/report?frame=``).

    Attributes:
        shown_frame: the B-scan the page's image, CAM and probability table are of (0-based).
        n_frames, n_graded, n_skipped: B-scan counts (skipped = ungradable or not OCT).
        rule_text: the aggregation rule in words.
        label, confidence: the volume's label and its probability; None when the volume is ungradable.
        referral: the volume's referral (``{"level", "headline", "advice", "reason", ...}``); it heads the page.
        deciding: ``(frame index, P(volume label) on that B-scan, model-view PNG)`` of the deciding B-scans.
    """

    shown_frame: int
    n_frames: int
    n_graded: int
    n_skipped: int
    rule_text: str
    label: str | None
    confidence: float | None
    referral: dict
    deciding: tuple[tuple[int, float, bytes], ...]


@dataclass(frozen=True)
class ReportInput:
    """Everything one report shows; the route fills it, :func:`build_report` only draws it.

    Attributes:
        image_png: the image as the model saw it (prepared, ``S x S``), RGB PNG bytes.
        overlay_png: CAM heatmap blended over that image, PNG bytes; None = no CAM (e.g. ungradable).
        cam_method: ``retina.cam.METHODS`` key of the overlay, e.g. ``"gradcam"``.
        cam_target: class name the heatmap explains; None = the predicted class.
        model_id, model_version: the model that answered (aliases resolved).
        task: ``"oct"`` or ``"fundus"``.
        label, confidence: predicted class and its probability in ``[0, 1]``; None when not graded.
        probabilities: class name -> probability in ``[0, 1]``, in model order; None when not graded.
        derived: fundus only, ``{"referable": P(grade >= 2), "any": P(grade >= 1)}``.
        referral: the answer's referral block (``retina.referral.referral_block``): ``{"level", "headline", "advice",
            "reason" (the rule that fired), "threshold"}``; the box prints its headline (``retina.referral.headline``
            of the level when absent), advice, reason and the operating-point sentence of its threshold.
        gate: image check, ``{"modality": str, "gradable": bool, "reasons": [str], "quality": {name: float}}``.
        metrics: the model's headline figures, already formatted, ``[(name, value)]`` (:func:`report_metrics`).
        metrics_source: where the metrics come from, e.g. ``"held-out test split, 371 patients"``; printed whole.
        metrics_heading: the table's column heading, naming the split the figures were measured on
            (``"Test split (742 images, 371 patients)"``).
        request_id: the request's id (also in the audit log).
        input_sha256: hex SHA-256 of the uploaded bytes.
        created: when the result was made (UTC; a naive datetime is taken as UTC).
        filename: the upload's name; only its base name is printed, and only when given.
        disclaimer: the disclaimer boxed at the bottom (default: ``retina.referral.DISCLAIMER``, the one there is).
        operating_points: the checkpoint's referral operating points (``meta.extra["operating_points"]``):
            ``{name: {"threshold", "fitted_on", "fit": {"sensitivity", "sensitivity_ci95", "specificity",
            "specificity_ci95", "n", "n_positive"}, "checks": {set name: same as fit}}}``; the one behind
            the referral's rule is printed under it with the served threshold (``referral["threshold"]``).
        volume: for one B-scan of a volume: the volume's answer and deciding B-scans (drawn under the images);
            ``referral`` is then the volume's.
    """

    image_png: bytes
    overlay_png: bytes | None
    cam_method: str | None
    cam_target: str | None
    model_id: str
    model_version: str
    task: str
    label: str | None
    confidence: float | None
    probabilities: dict[str, float] | None
    derived: dict[str, float] | None
    referral: dict
    gate: dict | None
    metrics: list[tuple[str, str]]
    metrics_source: str
    request_id: str
    input_sha256: str
    created: datetime
    filename: str | None
    disclaimer: str = DISCLAIMER
    operating_points: dict = field(default_factory=dict)
    metrics_heading: str = "Metric"
    volume: VolumeSummary | None = None


def _primary(evaluations: list[Evaluation]) -> Evaluation:
    """The evaluation the report leads with: the card's first that is not a validation split (those tuned the
    model), else the first."""
    return next((ev for ev in evaluations if ev.kind != "validation"), evaluations[0])


ONE_PAGE_SKIPS = ("any_dr_roc_auc", "referable_sensitivity_at_90_specificity")


def report_metrics(meta: CheckpointMeta) -> tuple[list[tuple[str, str]], str, str]:
    """The model's headline figures for the PDF, the heading naming their split, and where they come from.

    The figures are :func:`retina.figures.model_figures` of the checkpoint, printed with
    :func:`retina.figures.figure_text`: the numbers of ``GET /models``, the UI and the model card. The
    report leads with one evaluation (every figure, under its split's name), adds the headline figure
    (referable-DR AUC, else balanced accuracy) of each other non-validation set under a sub-heading (a row
    with an empty value), and the calibration fit's ECE before and after temperature scaling.

    Returns:
        ``(rows, heading, source)``: ``[(name, value)]``, e.g. ``"Test split (742 images, 371 patients)"``,
        and the lead evaluation's description from the card.
    """
    evaluations = model_figures(meta.card, meta.metrics, meta.calibration)
    rows: list[tuple[str, str]] = []
    heading, source = "Metric", "no evaluation recorded in the checkpoint"
    if evaluations:
        lead = _primary(evaluations)
        heading = lead.heading
        # Any-DR AUC and the sensitivity at 90% specificity are in the card and /models; one page keeps the
        # referable-DR AUC (the served operating point's own figures are printed beside the referral).
        rows += [(f.label, f.text) for f in lead.figures if f.key not in ONE_PAGE_SKIPS]
        others = [ev for ev in evaluations if ev is not lead and ev.kind != "validation"]
        if others:
            by_key = [{f.key: f for f in ev.figures} for ev in others]
            key = "referable_roc_auc" if all("referable_roc_auc" in k for k in by_key) else None
            label = next(f.label for f in others[0].figures if f.key == key) if key else None
            rows.append((f"{label}, other held-out sets" if label else "Other held-out sets", ""))
            for ev, figs in zip(others, by_key, strict=True):
                fig = figs[key] if key else (figs.get("balanced_accuracy") or ev.figures[0])
                size = f" ({ev.n} images)" if ev.n is not None else ""
                rows.append((f"{ev.short_name}{size}" + ("" if key else f": {fig.label}"), fig.text))
        source = f"{meta.card.get('markdown') or 'model card'}: {lead.title}" if lead.title else "training run"
    cal = meta.calibration
    if "ece_val_before" in cal:
        # One row (where it was fitted is in /models and the card), not a sub-heading plus a row: a
        # model with four held-out sets fills the page's rows.
        rows.append(
            (
                "ECE before -> after temperature scaling",
                f"{figure_text(cal['ece_val_before'])} -> {figure_text(meta.ece_after)}",
            )
        )
    return rows, heading, source
