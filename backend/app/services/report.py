"""One-page A4 PDF report of one image's result (fpdf2; pure: bytes in, bytes out).

The route gathers everything the page shows into a :class:`ReportInput` (image as the model
saw it, CAM overlay, probabilities, referral, gate, the model's headline metrics) and calls
:func:`build_report`. The builder does no I/O and no inference, so it is tested on its own.

Layout, top to bottom: title, timestamp and request id; referral box coloured by level (with the
served threshold and its operating point's validated sensitivity / specificity); the
image and the CAM overlay side by side; probabilities (left) beside the model and its metrics
(right); the image-check (gate) result; the input's SHA-256; the disclaimer boxed at the
bottom. Everything is sized from the content first so the page never overflows: long texts
are clipped to a few lines and the two images shrink to the space left.

fpdf2's core fonts (Helvetica, Courier) cover latin-1 only, so every text goes through
:func:`latin1` first: a class named ``"Drusen–α"`` prints as ``"Drusen-?"`` instead of raising.
Output is deterministic for a given input (the PDF's creation date is ``created``).
"""

from __future__ import annotations

import io
import math
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PureWindowsPath

from fpdf import FPDF
from fpdf.enums import MethodReturnValue
from PIL import Image

from retina.checkpoint import CheckpointMeta
from retina.figures import Evaluation, figure_text, model_figures

__all__ = [
    "DISCLAIMER",
    "ReportInput",
    "VolumeSummary",
    "build_report",
    "latin1",
    "operating_point_text",
    "referral_title",
    "report_metrics",
]

RGB = tuple[int, int, int]

# ----------------------------------------------------------------------------- page geometry (mm)
PAGE_W, PAGE_H = 210.0, 297.0
MARGIN_X, MARGIN_TOP, MARGIN_BOTTOM = 15.0, 13.0, 12.0
CONTENT_W = PAGE_W - 2 * MARGIN_X
IMAGE_MAX, IMAGE_MIN, IMAGE_GAP = 82.0, 36.0, 10.0
# Longest side of an embedded image: ~250 dpi at the largest printed size, keeps the PDF small.
IMAGE_MAX_PX = 768
ROW_H = 5.0  # one table row
LEFT_W, COL_GAP = 88.0, 8.0
RIGHT_W = CONTENT_W - LEFT_W - COL_GAP
# The images shrink (down to IMAGE_MIN) before the texts are clipped harder (see _LIMITS).
IMAGE_COMFORT = 60.0

# ----------------------------------------------------------------------------- colours
INK: RGB = (33, 33, 33)
MUTED: RGB = (110, 110, 110)
RULE: RGB = (200, 200, 200)
BAR_BG: RGB = (232, 232, 232)
BAR_FG: RGB = (96, 125, 139)
BAR_TOP: RGB = (38, 70, 83)
HIGHLIGHT: RGB = (240, 244, 246)
# level -> (title, strong colour, tint): urgent red, refer/routine amber, observation/rescreen green, rest grey
_RED, _AMBER, _GREEN, _GREY = (
    ((183, 28, 28), (253, 236, 234)),
    ((178, 106, 0), (255, 243, 224)),
    ((46, 125, 50), (232, 245, 233)),
    ((97, 97, 97), (238, 238, 238)),
)
LEVELS: dict[str, tuple[str, tuple[RGB, RGB]]] = {
    "urgent": ("Urgent referral", _RED),
    "refer": ("Referral advised", _AMBER),
    "routine": ("Routine referral", _AMBER),
    "observation": ("Observation", _GREEN),
    "rescreen_12_months": ("Rescreen in 12 months", _GREEN),
    "ungradable": ("Ungradable image", _GREY),
    "not_informative": ("No advice (model not informative)", _GREY),
}
# (task, referral level) -> the checkpoint operating point whose threshold decided that level
# (retina/referral.py: a level below a threshold is decided by the same point).
POINT_OF_LEVEL: dict[tuple[str, str], str] = {
    ("fundus", "urgent"): "urgent",
    ("fundus", "refer"): "refer",
    ("fundus", "rescreen_12_months"): "refer",
    ("oct", "urgent"): "urgent",
    ("oct", "routine"): "routine",
    ("oct", "observation"): "routine",
}
DERIVED_LABELS = {"referable": "Referable DR (grade >= 2)", "any": "Any DR (grade >= 1)"}
CAM_NAMES = {
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "hirescam": "HiResCAM",
    "xgradcam": "XGrad-CAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "scorecam": "Score-CAM",
}


@dataclass(frozen=True)
class VolumeSummary:
    """The whole OCT volume behind a one-B-scan report (``/report?frame=``).

    Attributes:
        shown_frame: the B-scan the page's image, CAM and probability table are of (0-based).
        n_frames, n_graded, n_skipped: B-scan counts (skipped = ungradable or not OCT).
        rule_text: the aggregation rule in words.
        label, confidence: the volume's label and its probability; None when the volume is ungradable.
        referral: the volume's referral (``{"level", "advice", "reason", ...}``); it heads the page.
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
        referral: ``{"level": str, "advice": one sentence, "reason": the rule that fired}``.
        gate: image check, ``{"modality": str, "gradable": bool, "reasons": [str], "quality": {name: float}}``.
        metrics: the model's headline figures, already formatted, ``[(name, value)]`` (:func:`report_metrics`).
        metrics_source: where the metrics come from, e.g. ``"held-out test split, 371 patients"``; printed whole.
        metrics_heading: the table's column heading, naming the split the figures were measured on
            (``"Test split (742 images, 371 patients)"``).
        request_id: the request's id (also in the audit log).
        input_sha256: hex SHA-256 of the uploaded bytes.
        created: when the result was made (UTC; a naive datetime is taken as UTC).
        filename: the upload's name; only its base name is printed, and only when given.
        disclaimer: the research-use disclaimer printed at the bottom.
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
    disclaimer: str
    operating_points: dict = field(default_factory=dict)
    metrics_heading: str = "Metric"
    volume: VolumeSummary | None = None


# ----------------------------------------------------------------------------- text helpers

# Common typography outside latin-1 that has a readable ASCII spelling.
_ASCII = {
    "\u2010": "-",
    "\u2011": "-",
    "\u2012": "-",
    "\u2013": "-",
    "\u2014": "-",
    "\u2212": "-",
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u2026": "...",
    "\u2022": "\u00b7",
    "\u2192": "->",
    "\u2264": "<=",
    "\u2265": ">=",
    "\u2260": "!=",
    "\u2248": "~",
}
_SPACE = re.compile(r"\s+")


def latin1(text: object) -> str:
    """``text`` as a single line that fpdf2's core fonts can print (latin-1, no control chars).

    Whitespace runs become one space; dashes, quotes and comparison signs get ASCII spellings;
    accented letters outside latin-1 lose their accent (``"ő"`` -> ``"o"``); anything else is ``"?"``.
    """
    out: list[str] = []
    for ch in _SPACE.sub(" ", str(text)).strip():
        if ord(ch) < 256:
            # C0/C1 controls are in latin-1's range but are not printable.
            out.append(ch if unicodedata.category(ch) != "Cc" else "?")
        elif ch in _ASCII:
            out.append(_ASCII[ch])
        else:
            base = "".join(
                c for c in unicodedata.normalize("NFKD", ch) if ord(c) < 256 and not unicodedata.combining(c)
            )
            out.append(base if base and all(unicodedata.category(c) != "Cc" for c in base) else "?")
    return "".join(out)


def referral_title(level: str) -> str:
    """Headline of the referral box for ``level`` (unknown levels: the code made readable)."""
    return LEVELS.get(level, (level.replace("_", " ").capitalize(), _GREY))[0]


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _rate(stats: object, name: str) -> str | None:
    """``sensitivity 0.87 [0.80, 0.92]`` from an operating point's ``fit`` or check; None when absent."""
    if not isinstance(stats, dict) or not _finite(stats.get(name)):
        return None
    ci = stats.get(f"{name}_ci95")
    text = f"{name} {stats[name]:.2f}"
    if isinstance(ci, list | tuple) and len(ci) == 2 and all(_finite(c) for c in ci):
        text += f" [{ci[0]:.2f}, {ci[1]:.2f}]"
    return text


def _rates(stats: object) -> str:
    """``sensitivity ... , specificity ... (n = 742, 163 positive)``; empty when there are no figures."""
    parts = [r for r in (_rate(stats, "sensitivity"), _rate(stats, "specificity")) if r]
    if not parts:
        return ""
    text = ", ".join(parts)
    n, pos = (stats.get("n"), stats.get("n_positive")) if isinstance(stats, dict) else (None, None)
    if _finite(n):
        text += f" (n = {n:g}" + (f", {pos:g} positive)" if _finite(pos) else ")")
    return text


def operating_point_text(inp: ReportInput) -> str:
    """The served threshold of the referral's rule and, when the checkpoint has that operating point, where
    it was fitted, its sensitivity / specificity there and on its check sets; empty when no threshold
    decided the referral (ungradable, not informative, no referral policy).

    ``Operating point: threshold 0.230, fitted on <split>: sensitivity 0.87 [0.80, 0.92], specificity
    0.55 [0.51, 0.59] (n = 742, 163 positive). At this threshold on idrid: sensitivity ...``
    """
    ref = inp.referral or {}
    served = ref.get("threshold")
    name = POINT_OF_LEVEL.get((inp.task, str(ref.get("level"))))
    if not _finite(served) or name is None:
        return ""
    points = inp.operating_points if isinstance(inp.operating_points, dict) else {}
    point = points.get(name)
    if not isinstance(point, dict) or not _finite(point.get("threshold")):
        return f"Threshold {served:.3f} (service default or setting; no validated operating point in the checkpoint)."
    fitted = float(point["threshold"])
    where = f" fitted on {point['fitted_on']}" if point.get("fitted_on") else ""
    if abs(float(served) - fitted) > 1e-9:
        text = f"Threshold {served:.3f} (service setting) overrides the operating point {fitted:.3f}{where}"
        at = f"At {fitted:.3f}"
    else:
        text = f"Operating point: threshold {served:.3f}" + (f",{where}" if where else "")
        at = "At this threshold"
    if fit := _rates(point.get("fit")):
        text += f": {fit}"
    checks = [f"on {c}: {r}" for c, stats in (point.get("checks") or {}).items() if (r := _rates(stats))]
    if checks:
        text += f". {at} " + "; ".join(checks)
    return text + "."


def _timestamp(created: datetime) -> str:
    """ISO 8601 UTC to the second, ``2026-11-22T10:15:03Z``; naive datetimes are taken as UTC."""
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _prob(p: float) -> str:
    """How every probability is printed: 3 decimals (``0.831``)."""
    return f"{p:.3f}"


def _fit(pdf: FPDF, text: str, width: float) -> str:
    """``text`` cut with ``...`` so that it fits ``width`` mm in the current font."""
    if pdf.get_string_width(text) <= width:
        return text
    while text and pdf.get_string_width(text + "...") > width:
        text = text[:-1]
    return text.rstrip() + "..."


def _lines(pdf: FPDF, text: str, width: float, max_lines: int) -> list[str]:
    """``text`` word-wrapped to ``width`` mm in the current font, at most ``max_lines`` (last one ellipsised)."""
    # Wrapped to width - 2 * c_margin, the same room _Page.text gives a line in a cell of that width.
    lines = pdf.multi_cell(width, 1, text, dry_run=True, output=MethodReturnValue.LINES)
    lines = [ln for ln in lines if ln.strip()] or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = _fit(pdf, lines[-1] + " ...", width - 2 * pdf.c_margin)
    return lines


def _base_name(filename: str) -> str:
    """The base name of a client-supplied path (``/`` or ``\\`` separators), never its folders."""
    return PureWindowsPath(filename).name


def _pil_rgb(png: bytes) -> tuple[Image.Image, tuple[int, int]]:
    """PNG (any mode) -> (RGB PIL image with longest side <= ``IMAGE_MAX_PX``, original ``(width, height)``)."""
    with Image.open(io.BytesIO(png)) as im:
        im.load()
        rgb = im.convert("RGB")
    size = rgb.size
    if max(size) > IMAGE_MAX_PX:
        rgb.thumbnail((IMAGE_MAX_PX, IMAGE_MAX_PX), Image.Resampling.LANCZOS)
    return rgb, size


@dataclass(frozen=True)
class _Limits:
    """How many lines/rows each text may take; tried loosest first until the images get enough room."""

    advice: int
    reason: int
    classes: int
    metrics: int
    metric_name: int
    source: int
    gate: int
    gate_reasons: int
    disclaimer: int
    point: int


# The last one always fits: every block is then bounded (40 classes, 30 metrics and pages of text
# still leave the images ~70 mm; see test_extreme_inputs_still_one_page).
_LIMITS = (
    _Limits(
        advice=5,
        reason=2,
        classes=16,
        metrics=12,
        metric_name=3,
        source=5,
        gate=2,
        gate_reasons=4,
        disclaimer=4,
        point=4,
    ),
    _Limits(
        advice=3,
        reason=1,
        classes=14,
        metrics=10,
        metric_name=2,
        source=4,
        gate=2,
        gate_reasons=3,
        disclaimer=3,
        point=3,
    ),
    _Limits(
        advice=2,
        reason=1,
        classes=12,
        metrics=8,
        metric_name=1,
        source=3,
        gate=1,
        gate_reasons=2,
        disclaimer=2,
        point=2,
    ),
)


# ----------------------------------------------------------------------------- drawing


class _Page:
    """The one A4 page being drawn, with small helpers that keep every text inside its box."""

    def __init__(self, created: datetime) -> None:
        pdf = FPDF(orientation="portrait", unit="mm", format="A4")
        pdf.set_margins(MARGIN_X, MARGIN_TOP, MARGIN_X)
        # Never break: the layout is measured to fit, and one page is the contract.
        pdf.set_auto_page_break(False)
        # Fixed creation date (the result's time): same input -> byte-identical PDF.
        pdf.set_creation_date(created)
        pdf.set_title("RetinaScope report")
        pdf.set_creator("RetinaScope")
        pdf.add_page()
        self.pdf = pdf

    def font(self, size: float, style: str = "", colour: RGB = INK, family: str = "helvetica") -> None:
        self.pdf.set_font(family, style, size)
        self.pdf.set_text_color(*colour)

    def lines(self, text: str, width: float, max_lines: int) -> list[str]:
        return _lines(self.pdf, text, width, max_lines)

    def text(self, x: float, y: float, w: float, h: float, text: str, align: str = "L") -> None:
        """One line of (already sanitised) text in the box ``(x, y, w, h)``, cut to fit."""
        self.pdf.set_xy(x, y)
        self.pdf.cell(w, h, _fit(self.pdf, text, w - 2 * self.pdf.c_margin), align=align)

    def fill(self, x: float, y: float, w: float, h: float, colour: RGB) -> None:
        self.pdf.set_fill_color(*colour)
        self.pdf.rect(x, y, w, h, style="F")

    def rule(self, x: float, y: float, w: float, colour: RGB = RULE, width: float = 0.25) -> None:
        self.pdf.set_draw_color(*colour)
        self.pdf.set_line_width(width)
        self.pdf.line(x, y, x + w, y)

    def heading(self, x: float, y: float, w: float, text: str) -> float:
        """Section heading with a rule under it; returns the y below it (``HEADING_H`` lower)."""
        self.font(10.5, "B")
        self.text(x, y, w, 6, text)
        self.rule(x + self.pdf.c_margin, y + 6.3, w - 2 * self.pdf.c_margin)
        return y + HEADING_H

    def bar(self, x: float, y: float, w: float, p: float, colour: RGB) -> None:
        """Horizontal probability bar (``p`` in ``[0, 1]``) vertically centred in a table row."""
        self.fill(x, y + 1.6, w, ROW_H - 3.2, BAR_BG)
        frac = min(max(float(p), 0.0), 1.0)
        if frac > 0:
            self.fill(x, y + 1.6, w * frac, ROW_H - 3.2, colour)


HEADING_H = 8.0


def _referral_block(pg: _Page, inp: ReportInput, lim: _Limits, y: float, draw: bool) -> float:
    """Box tinted by referral level: title, advice, the rule that fired and its operating point; returns its height."""
    level = str(inp.referral.get("level", "unknown"))
    strong, tint = LEVELS.get(level, ("", _GREY))[1]
    pad, text_x, text_w = 4.0, MARGIN_X + 6.0, CONTENT_W - 9.0
    pg.font(11)
    advice = pg.lines(latin1(inp.referral.get("advice", "")), text_w, lim.advice)
    pg.font(8.5)
    reason_text = latin1(inp.referral.get("reason", ""))
    reason = pg.lines(f"Rule: {reason_text}", text_w, lim.reason) if reason_text else []
    point_text = latin1(operating_point_text(inp))
    point = pg.lines(point_text, text_w, lim.point) if point_text else []
    small = reason + point
    h = pad + 8.0 + 5.2 * len(advice) + (1.0 + 4.2 * len(small) if small else 0.0) + pad
    if not draw:
        return h
    pg.fill(MARGIN_X, y, CONTENT_W, h, tint)
    pg.fill(MARGIN_X, y, 2.5, h, strong)
    yy = y + pad
    pg.font(13, "B", strong)
    pg.text(text_x, yy, text_w * 0.7, 7, latin1(referral_title(level)).upper())
    pg.font(8, "", MUTED)
    pg.text(text_x + text_w * 0.7, yy, text_w * 0.3, 7, latin1(f"referral level: {level}"), align="R")
    yy += 8.0
    pg.font(11)
    for line in advice:
        pg.text(text_x, yy, text_w, 5.2, line)
        yy += 5.2
    if small:
        yy += 1.0
        pg.font(8.5, "", MUTED)
        for line in small:
            pg.text(text_x, yy, text_w, 4.2, line)
            yy += 4.2
    return h


IMAGES_CAPTION_H = 6.0


def _images_block(pg: _Page, inp: ReportInput, y: float, side: float) -> None:
    """Image and CAM overlay side by side in ``side`` mm squares, captions below (``IMAGES_CAPTION_H``)."""
    x0 = MARGIN_X + (CONTENT_W - 2 * side - IMAGE_GAP) / 2
    image, (w0, h0) = _pil_rgb(inp.image_png)
    slots: list[tuple[Image.Image | None, str]] = [(image, f"Input as the model saw it ({w0} x {h0} px)")]
    if inp.overlay_png is not None:
        method = CAM_NAMES.get(inp.cam_method or "", inp.cam_method or "CAM")
        target = f"'{inp.cam_target}'" if inp.cam_target else "the predicted class"
        slots.append((_pil_rgb(inp.overlay_png)[0], f"{method} for {target} (red = most relevant)"))
    else:
        slots.append((None, "No CAM overlay"))
    for i, (im, caption) in enumerate(slots):
        x = x0 + i * (side + IMAGE_GAP)
        if im is None:
            pg.fill(x, y, side, side, (245, 245, 245))
            pg.font(9, "I", MUTED)
            pg.text(x, y + side / 2 - 3, side, 6, "CAM not available", align="C")
        else:
            # Fit inside the square keeping the aspect ratio, centred.
            scale = side / max(im.width, im.height)
            w, h = im.width * scale, im.height * scale
            pg.pdf.image(im, x=x + (side - w) / 2, y=y + (side - h) / 2, w=w, h=h)
        pg.pdf.set_draw_color(*RULE)
        pg.pdf.set_line_width(0.2)
        pg.pdf.rect(x, y, side, side)
        pg.font(8, "", MUTED)
        pg.text(x - 4, y + side + 1.0, side + 8, 4.5, latin1(caption), align="C")


VOLUME_THUMB = 26.0


def _volume_block(pg: _Page, inp: ReportInput, y: float, draw: bool) -> float:
    """The volume's answer in one line, then its deciding B-scans side by side; returns its height."""
    v = inp.volume
    if v is None:
        return 0.0
    lh = 4.4
    answer = f"{v.label} ({_prob(v.confidence)})" if v.label is not None and v.confidence is not None else "ungradable"
    lines = [
        f"Whole volume: {answer}, referral {v.referral.get('level', 'n/a')}; {v.n_frames} B-scans, "
        f"{v.n_graded} graded, {v.n_skipped} skipped. Rule: {v.rule_text}.",
        f"Image, CAM and probabilities on this page: B-scan {v.shown_frame}. Deciding B-scans (highest "
        f"P({v.label}) first):"
        if v.deciding
        else f"Image and CAM on this page: B-scan {v.shown_frame}.",
    ]
    pg.font(8.5)
    wrapped = [w for line in lines for w in pg.lines(latin1(line), CONTENT_W, 2)]
    h = HEADING_H + lh * len(wrapped) + (1.5 + VOLUME_THUMB + IMAGES_CAPTION_H if v.deciding else 0.0)
    if not draw:
        return h
    yy = pg.heading(MARGIN_X, y, CONTENT_W, "OCT volume")
    pg.font(8.5)
    for line in wrapped:
        pg.text(MARGIN_X, yy, CONTENT_W, lh, line)
        yy += lh
    yy += 1.5
    for k, (index, p, png) in enumerate(v.deciding):
        x = MARGIN_X + k * (VOLUME_THUMB + 8.0)
        im = _pil_rgb(png)[0]
        scale = VOLUME_THUMB / max(im.width, im.height)
        pg.pdf.image(im, x=x, y=yy, w=im.width * scale, h=im.height * scale)
        pg.pdf.set_draw_color(*RULE)
        pg.pdf.rect(x, yy, VOLUME_THUMB, VOLUME_THUMB)
        pg.font(8, "", MUTED)
        pg.text(x - 3, yy + VOLUME_THUMB + 0.5, VOLUME_THUMB + 6, 4.5, latin1(f"B-scan {index}: {_prob(p)}"), "C")
    return h


def _not_graded_block(pg: _Page, inp: ReportInput, lim: _Limits, y: float, draw: bool) -> float:
    """Left column when there are no probabilities: say so and list the gate's reasons."""
    x, w, lh = MARGIN_X, LEFT_W, 4.6
    reasons = [latin1(r) for r in ((inp.gate or {}).get("reasons") or [])][: lim.gate_reasons]
    pg.font(9, "B")
    intro = pg.lines("Not graded: the model's output is withheld for this image.", w, 2)
    pg.font(9)
    bullets = [pg.lines(r, w - 4.0, 2 if lim.gate_reasons > 2 else 1) for r in reasons]
    h = HEADING_H + lh * len(intro) + (1.5 + lh * (1 + sum(len(b) for b in bullets)) if bullets else 0.0)
    if not draw:
        return h
    yy = pg.heading(x, y, w, "Prediction")
    pg.font(9, "B")
    for line in intro:
        pg.text(x, yy, w, lh, line)
        yy += lh
    if bullets:
        yy += 1.5
        pg.font(9, "", MUTED)
        pg.text(x, yy, w, lh, "Reasons:")
        yy += lh
        pg.font(9)
        for bullet in bullets:
            pg.text(x, yy, 4.0, lh, "\u00b7")
            for line in bullet:
                pg.text(x + 4.0, yy, w - 4.0, lh, line)
                yy += lh
    return h


def _prediction_block(pg: _Page, inp: ReportInput, lim: _Limits, y: float, draw: bool) -> float:
    """Left column: probability table (predicted class bold) and derived probabilities; returns its height."""
    if inp.probabilities is None:
        return _not_graded_block(pg, inp, lim, y, draw)
    x, w = MARGIN_X, LEFT_W
    name_w, prob_w = 42.0, 16.0
    bar_x, bar_w = x + name_w + prob_w + 3.0, w - name_w - prob_w - 5.0
    items = list(inp.probabilities.items())
    hidden = 0
    if len(items) > lim.classes:
        # Keep the most probable classes (one row goes to the "... more" note), still in model order.
        keep = {k for k, _ in sorted(items, key=lambda kv: -kv[1])[: lim.classes - 1]}
        hidden = len(items) - len(keep)
        items = [kv for kv in items if kv[0] in keep]
    derived = list((inp.derived or {}).items())[:3]
    rows = 1 + len(items) + (1 if hidden else 0) + (0.4 + len(derived) if derived else 0)
    h = HEADING_H + ROW_H * rows
    if not draw:
        return h
    yy = pg.heading(x, y, w, "Prediction")
    pg.font(7.5, "", MUTED)
    pg.text(x, yy, name_w, ROW_H, "Class")
    pg.text(x + name_w, yy, prob_w, ROW_H, "Probability", align="R")
    yy += ROW_H
    for name, p in items:
        top = name == inp.label
        if top:
            pg.fill(x, yy, w, ROW_H, HIGHLIGHT)
        pg.font(9, "B" if top else "")
        pg.text(x, yy, name_w, ROW_H, latin1(name))
        pg.text(x + name_w, yy, prob_w, ROW_H, _prob(p), align="R")
        pg.bar(bar_x, yy, bar_w, p, BAR_TOP if top else BAR_FG)
        yy += ROW_H
    if hidden:
        pg.font(8, "I", MUTED)
        pg.text(x, yy, w, ROW_H, f"... {hidden} less probable classes not shown")
        yy += ROW_H
    if derived:
        yy += 0.4 * ROW_H
        pg.rule(x + pg.pdf.c_margin, yy, w - 2 * pg.pdf.c_margin)
        for key, p in derived:
            pg.font(9, "I")
            pg.text(x, yy, name_w, ROW_H, latin1(DERIVED_LABELS.get(key, key)))
            pg.font(9)
            pg.text(x + name_w, yy, prob_w, ROW_H, _prob(p), align="R")
            pg.bar(bar_x, yy, bar_w, p, BAR_FG)
            yy += ROW_H
    return h


def _model_block(pg: _Page, inp: ReportInput, lim: _Limits, y: float, draw: bool) -> float:
    """Right column: model id/version, its headline figures under the name of their split, and their source
    (printed whole: a cut source would hide which set the figures describe); returns its height.

    A metrics row with an empty value is a sub-heading (another set's figures follow it)."""
    x, w = MARGIN_X + LEFT_W + COL_GAP, RIGHT_W
    value_w, lh, gap = 28.0, 4.0, 0.5
    name_w = w - value_w
    rows = []
    for n, v in inp.metrics[: lim.metrics]:
        pg.font(7.5, "B", MUTED) if not v else pg.font(8)
        rows.append((pg.lines(latin1(n), name_w if v else w, lim.metric_name), latin1(v)))
    pg.font(7.5, "B", MUTED)
    heading = pg.lines(latin1(inp.metrics_heading), name_w, 2)
    pg.font(7.5, "I")
    source = pg.lines(latin1(f"Source: {inp.metrics_source}"), w, lim.source) if inp.metrics_source else []
    metrics_h = sum(len(n) * lh + gap for n, _ in rows)
    head_h = ROW_H + lh * (len(heading) - 1)
    h = HEADING_H + 10.5 + (head_h + metrics_h if rows else lh) + lh * len(source)
    if not draw:
        return h
    yy = pg.heading(x, y, w, "Model")
    pg.font(9.5, "B")
    pg.text(x, yy, w, 5.0, latin1(f"{inp.model_id} v{inp.model_version}"))
    yy += 5.0
    pg.font(8, "", MUTED)
    pg.text(x, yy, w, 4.5, latin1(f"task: {inp.task}"))
    yy += 5.5
    if rows:
        pg.font(7.5, "B", MUTED)
        for i, line in enumerate(heading):
            pg.text(x, yy + lh * i, name_w, ROW_H, line)
        pg.font(7.5, "", MUTED)
        pg.text(x + name_w, yy, value_w, ROW_H, "Value", align="R")
        yy += head_h
    else:
        pg.font(8, "I", MUTED)
        pg.text(x, yy, w, lh, "No evaluation figures recorded for this model.")
        yy += lh
    for name_lines, value in rows:
        if not value:  # sub-heading: the next rows belong to another set
            pg.font(7.5, "B", MUTED)
            for i, line in enumerate(name_lines):
                pg.text(x, yy + lh * i, w, lh, line)
            yy += len(name_lines) * lh + gap
            continue
        pg.font(8)
        for i, line in enumerate(name_lines):
            pg.text(x, yy + lh * i, name_w, lh, line)
        pg.font(8, "B")
        pg.text(x + name_w, yy, value_w, lh, value, align="R")
        yy += len(name_lines) * lh + gap
    pg.font(7.5, "I", MUTED)
    for line in source:
        pg.text(x, yy, w, lh, line)
        yy += lh
    return h


GATE_LH = 4.3


def _gate_lines(pg: _Page, gate: dict | None, lim: _Limits, with_reasons: bool) -> list[str]:
    """The gate result: modality, gradable and quality numbers, then (optionally) the reasons."""
    if gate is None:
        return ["Not run for this request."]
    gradable = gate.get("gradable")
    parts = [
        f"Modality: {gate.get('modality', 'unknown')}",
        f"Gradable: {'yes' if gradable else 'no' if gradable is not None else 'unknown'}",
    ]
    if gate.get("quality_grade"):
        parts.append(f"Quality grade: {gate['quality_grade']}")
    quality = gate.get("quality") or {}
    if quality:
        parts.append("Quality: " + ", ".join(f"{k} {float(v):.2f}" for k, v in quality.items()))
    pg.font(8.5)
    lines = pg.lines(latin1(" | ".join(parts)), CONTENT_W, lim.gate)
    reasons = [latin1(r) for r in gate.get("reasons") or []]
    if reasons and with_reasons:
        lines += pg.lines("Reasons: " + "; ".join(reasons), CONTENT_W, lim.gate)
    return lines


def _header(pg: _Page, inp: ReportInput) -> None:
    """Title, then when/which request (and the file's base name when given), over a rule."""
    y = MARGIN_TOP
    pg.font(18, "B")
    pg.text(MARGIN_X, y, CONTENT_W * 0.6, 9, "RetinaScope report")
    pg.font(8, "B", _RED[0])
    pg.text(MARGIN_X + CONTENT_W * 0.6, y + 1.5, CONTENT_W * 0.4, 6, "RESEARCH USE ONLY - NOT A DIAGNOSIS", align="R")
    y += 10.0
    meta = [f"Created {_timestamp(inp.created)}", f"Request {inp.request_id}"]
    if inp.filename:
        meta.append(f"File {_base_name(inp.filename)}")
    pg.font(8.5, "", MUTED)
    pg.text(MARGIN_X, y, CONTENT_W, 5, latin1(" | ".join(meta)))
    pg.rule(MARGIN_X, y + 6.5, CONTENT_W, INK, 0.4)


def _footer(pg: _Page, inp: ReportInput, disclaimer: list[str], disc_h: float, sha_h: float) -> None:
    """The input's hash just above the disclaimer box at the bottom of the page."""
    pdf = pg.pdf
    yb = PAGE_H - MARGIN_BOTTOM - disc_h
    pg.font(8, "", MUTED)
    pg.text(MARGIN_X, yb - sha_h, 26, 5, "Input SHA-256")
    pg.font(8, "", INK, family="courier")
    pg.text(MARGIN_X + 24, yb - sha_h, CONTENT_W - 24, 5, latin1(inp.input_sha256))
    pdf.set_draw_color(*MUTED)
    pdf.set_line_width(0.3)
    pdf.set_fill_color(246, 246, 246)
    pdf.rect(MARGIN_X, yb, CONTENT_W, disc_h, style="DF")
    pg.font(8.5, "B")
    for i, line in enumerate(disclaimer):
        pg.text(MARGIN_X + 3.0, yb + 3.5 + 4.2 * i, CONTENT_W - 6.0, 4.2, line, align="C")


def build_report(inp: ReportInput) -> bytes:
    """Draw ``inp`` as a one-page A4 PDF and return its bytes (``b"%PDF-..."``).

    Probabilities are printed with 3 decimals (``0.428``), the time as ``2026-11-22T10:15:03Z``.

    Raises:
        PIL.UnidentifiedImageError: ``image_png`` or ``overlay_png`` is not a readable image.
    """
    pg = _Page(inp.created)
    pdf = pg.pdf
    usable = PAGE_H - MARGIN_TOP - MARGIN_BOTTOM
    header_h, sha_h, gap = 19.0, 6.0, 5.0

    # Measure every block but the images; the images get what is left. Clip texts harder only
    # when the images would get less than IMAGE_COMFORT.
    for lim in _LIMITS:
        ref_h = _referral_block(pg, inp, lim, 0.0, draw=False)
        cols_h = max(_prediction_block(pg, inp, lim, 0.0, False), _model_block(pg, inp, lim, 0.0, False))
        # Ungradable: the reasons already stand in the Prediction column.
        gate = _gate_lines(pg, inp.gate, lim, with_reasons=inp.probabilities is not None)
        pg.font(8.5, "B")
        disclaimer = pg.lines(latin1(inp.disclaimer), CONTENT_W - 6.0, lim.disclaimer)
        disc_h = 7.0 + 4.2 * len(disclaimer)
        gate_h = HEADING_H + GATE_LH * len(gate)
        vol_h = _volume_block(pg, inp, 0.0, draw=False)
        vol_h += gap if vol_h else 0.0
        fixed = header_h + ref_h + gap + IMAGES_CAPTION_H + gap + vol_h + cols_h + gap + gate_h + gap + sha_h + disc_h
        side = min(IMAGE_MAX, usable - fixed)
        if side >= IMAGE_COMFORT:
            break
    if side < IMAGE_MIN:  # the tightest limits bound every block; reaching this is a layout bug
        raise RuntimeError(f"report layout overflows: {side:.1f} mm left for the images")

    _header(pg, inp)
    y = MARGIN_TOP + header_h

    _referral_block(pg, inp, lim, y, draw=True)
    y += ref_h + gap
    _images_block(pg, inp, y, side)
    y += side + IMAGES_CAPTION_H + gap
    if vol_h:
        _volume_block(pg, inp, y, draw=True)
        y += vol_h
    _prediction_block(pg, inp, lim, y, draw=True)
    _model_block(pg, inp, lim, y, draw=True)
    y += cols_h + gap

    y = pg.heading(MARGIN_X, y, CONTENT_W, "Image check")
    for i, line in enumerate(gate):
        pg.font(8.5, "", INK if i == 0 else MUTED)
        pg.text(MARGIN_X, y, CONTENT_W, GATE_LH, line)
        y += GATE_LH

    _footer(pg, inp, disclaimer, disc_h, sha_h)
    if pdf.pages_count != 1:  # auto page break is off; a regression must not ship a 2-page report
        raise RuntimeError(f"report layout produced {pdf.pages_count} pages")
    return bytes(pdf.output())


# Said once, in the footer box (the header's red line is its short form). The referral's own research note
# (retina.referral.RESEARCH_NOTE, in every /predict answer) repeats this, so it is not appended here.
DISCLAIMER = (
    "RetinaScope is a research tool, not a medical device. This report is not a diagnosis: the model was trained "
    "on small public datasets and validated only as stated above. A qualified clinician must review the image and "
    "decide on any referral."
)


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
