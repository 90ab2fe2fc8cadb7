"""The report's blocks, top to bottom: header, referral box, image and CAM, OCT volume, prediction table,
model and its figures, image check, hash and disclaimer footer.

Each ``*_block(..., draw=False)`` only measures (returns its height in mm) so that
:func:`backend.app.services.report.layout.build_report` can size the images from what is left;
``draw=True`` draws it at ``y``. Every word of the referral (headline, advice, operating-point
sentence, disclaimer) comes from ``retina.referral``: the blocks print what they are given.
"""

from __future__ import annotations

from PIL import Image

from backend.app.services.report.content import ReportInput
from backend.app.services.report.page import (
    BAR_FG,
    BAR_TOP,
    COL_GAP,
    CONTENT_W,
    GREY,
    HEADING_H,
    HIGHLIGHT,
    IMAGE_GAP,
    INK,
    LEFT_W,
    LEVEL_COLOURS,
    MARGIN_BOTTOM,
    MARGIN_TOP,
    MARGIN_X,
    MUTED,
    PAGE_H,
    RED,
    RIGHT_W,
    ROW_H,
    RULE,
    Limits,
    Page,
    pil_rgb,
)
from backend.app.services.report.text import base_name, latin1, prob_text, timestamp
from retina.referral import DISCLAIMER_SHORT, decided_by_text, headline

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


def referral_block(pg: Page, inp: ReportInput, lim: Limits, y: float, draw: bool) -> float:
    """Box tinted by referral level: title, advice, the rule that fired and its operating point; returns its height."""
    level = str(inp.referral.get("level", "unknown"))
    strong, tint = LEVEL_COLOURS.get(level, GREY)
    pad, text_x, text_w = 4.0, MARGIN_X + 6.0, CONTENT_W - 9.0
    pg.font(11)
    advice = pg.lines(latin1(inp.referral.get("advice", "")), text_w, lim.advice)
    pg.font(8.5)
    reason_text = latin1(inp.referral.get("reason", ""))
    reason = pg.lines(f"Rule: {reason_text}", text_w, lim.reason) if reason_text else []
    point_text = latin1(decided_by_text(inp.task, inp.referral, inp.operating_points or {}))
    point = pg.lines(point_text, text_w, lim.point) if point_text else []
    small = reason + point
    h = pad + 8.0 + 5.2 * len(advice) + (1.0 + 4.2 * len(small) if small else 0.0) + pad
    if not draw:
        return h
    pg.fill(MARGIN_X, y, CONTENT_W, h, tint)
    pg.fill(MARGIN_X, y, 2.5, h, strong)
    yy = y + pad
    pg.font(13, "B", strong)
    title = inp.referral.get("headline") or headline(level)
    pg.text(text_x, yy, text_w * 0.7, 7, latin1(title).upper())
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


def images_block(pg: Page, inp: ReportInput, y: float, side: float) -> None:
    """Image and CAM overlay side by side in ``side`` mm squares, captions below (``IMAGES_CAPTION_H``)."""
    x0 = MARGIN_X + (CONTENT_W - 2 * side - IMAGE_GAP) / 2
    image, (w0, h0) = pil_rgb(inp.image_png)
    slots: list[tuple[Image.Image | None, str]] = [(image, f"Input as the model saw it ({w0} x {h0} px)")]
    if inp.overlay_png is not None:
        method = CAM_NAMES.get(inp.cam_method or "", inp.cam_method or "CAM")
        target = f"'{inp.cam_target}'" if inp.cam_target else "the predicted class"
        slots.append((pil_rgb(inp.overlay_png)[0], f"{method} for {target} (red = most relevant)"))
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


def volume_block(pg: Page, inp: ReportInput, y: float, draw: bool) -> float:
    """The volume's answer in one line, then its deciding B-scans side by side; returns its height."""
    v = inp.volume
    if v is None:
        return 0.0
    lh = 4.4
    graded = v.label is not None and v.confidence is not None
    answer = f"{v.label} ({prob_text(v.confidence)})" if graded else "ungradable"
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
        im = pil_rgb(png)[0]
        scale = VOLUME_THUMB / max(im.width, im.height)
        pg.pdf.image(im, x=x, y=yy, w=im.width * scale, h=im.height * scale)
        pg.pdf.set_draw_color(*RULE)
        pg.pdf.rect(x, yy, VOLUME_THUMB, VOLUME_THUMB)
        pg.font(8, "", MUTED)
        pg.text(x - 3, yy + VOLUME_THUMB + 0.5, VOLUME_THUMB + 6, 4.5, latin1(f"B-scan {index}: {prob_text(p)}"), "C")
    return h


def _not_graded_block(pg: Page, inp: ReportInput, lim: Limits, y: float, draw: bool) -> float:
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


def prediction_block(pg: Page, inp: ReportInput, lim: Limits, y: float, draw: bool) -> float:
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
        pg.text(x + name_w, yy, prob_w, ROW_H, prob_text(p), align="R")
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
            pg.text(x + name_w, yy, prob_w, ROW_H, prob_text(p), align="R")
            pg.bar(bar_x, yy, bar_w, p, BAR_FG)
            yy += ROW_H
    return h


def model_block(pg: Page, inp: ReportInput, lim: Limits, y: float, draw: bool) -> float:
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


def gate_lines(pg: Page, gate: dict | None, lim: Limits, with_reasons: bool) -> list[str]:
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


def header(pg: Page, inp: ReportInput) -> None:
    """Title, then when/which request (and the file's base name when given), over a rule."""
    y = MARGIN_TOP
    pg.font(18, "B")
    pg.text(MARGIN_X, y, CONTENT_W * 0.6, 9, "RetinaScope report")
    pg.font(8, "B", RED[0])
    pg.text(MARGIN_X + CONTENT_W * 0.6, y + 1.5, CONTENT_W * 0.4, 6, latin1(DISCLAIMER_SHORT).upper(), align="R")
    y += 10.0
    meta = [f"Created {timestamp(inp.created)}", f"Request {inp.request_id}"]
    if inp.filename:
        meta.append(f"File {base_name(inp.filename)}")
    pg.font(8.5, "", MUTED)
    pg.text(MARGIN_X, y, CONTENT_W, 5, latin1(" | ".join(meta)))
    pg.rule(MARGIN_X, y + 6.5, CONTENT_W, INK, 0.4)


def footer(pg: Page, inp: ReportInput, disclaimer: list[str], disc_h: float, sha_h: float) -> None:
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
