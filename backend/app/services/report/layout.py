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

Output is deterministic for a given input (the PDF's creation date is ``created``).
"""

from __future__ import annotations

from backend.app.services.report.blocks import (
    GATE_LH,
    IMAGES_CAPTION_H,
    footer,
    gate_lines,
    header,
    images_block,
    model_block,
    prediction_block,
    referral_block,
    volume_block,
)
from backend.app.services.report.content import ReportInput
from backend.app.services.report.page import (
    CONTENT_W,
    HEADING_H,
    IMAGE_COMFORT,
    IMAGE_MAX,
    IMAGE_MIN,
    INK,
    LIMITS,
    MARGIN_BOTTOM,
    MARGIN_TOP,
    MARGIN_X,
    MUTED,
    PAGE_H,
    Page,
)
from backend.app.services.report.text import latin1


def build_report(inp: ReportInput) -> bytes:
    """Draw ``inp`` as a one-page A4 PDF and return its bytes (``b"%PDF-..."``).

    Probabilities are printed with 3 decimals (``0.428``), the time as ``2026-11-22T10:15:03Z``.

    Raises:
        PIL.UnidentifiedImageError: ``image_png`` or ``overlay_png`` is not a readable image.
    """
    pg = Page(inp.created)
    pdf = pg.pdf
    usable = PAGE_H - MARGIN_TOP - MARGIN_BOTTOM
    header_h, sha_h, gap = 19.0, 6.0, 5.0

    # Measure every block but the images; the images get what is left. Clip texts harder only
    # when the images would get less than IMAGE_COMFORT.
    for lim in LIMITS:
        ref_h = referral_block(pg, inp, lim, 0.0, draw=False)
        cols_h = max(prediction_block(pg, inp, lim, 0.0, False), model_block(pg, inp, lim, 0.0, False))
        # Ungradable: the reasons already stand in the Prediction column.
        gate = gate_lines(pg, inp.gate, lim, with_reasons=inp.probabilities is not None)
        pg.font(8.5, "B")
        disclaimer = pg.lines(latin1(inp.disclaimer), CONTENT_W - 6.0, lim.disclaimer)
        disc_h = 7.0 + 4.2 * len(disclaimer)
        gate_h = HEADING_H + GATE_LH * len(gate)
        vol_h = volume_block(pg, inp, 0.0, draw=False)
        vol_h += gap if vol_h else 0.0
        fixed = header_h + ref_h + gap + IMAGES_CAPTION_H + gap + vol_h + cols_h + gap + gate_h + gap + sha_h + disc_h
        side = min(IMAGE_MAX, usable - fixed)
        if side >= IMAGE_COMFORT:
            break
    if side < IMAGE_MIN:  # the tightest limits bound every block; reaching this is a layout bug
        raise RuntimeError(f"report layout overflows: {side:.1f} mm left for the images")

    header(pg, inp)
    y = MARGIN_TOP + header_h

    referral_block(pg, inp, lim, y, draw=True)
    y += ref_h + gap
    images_block(pg, inp, y, side)
    y += side + IMAGES_CAPTION_H + gap
    if vol_h:
        volume_block(pg, inp, y, draw=True)
        y += vol_h
    prediction_block(pg, inp, lim, y, draw=True)
    model_block(pg, inp, lim, y, draw=True)
    y += cols_h + gap

    y = pg.heading(MARGIN_X, y, CONTENT_W, "Image check")
    for i, line in enumerate(gate):
        pg.font(8.5, "", INK if i == 0 else MUTED)
        pg.text(MARGIN_X, y, CONTENT_W, GATE_LH, line)
        y += GATE_LH

    footer(pg, inp, disclaimer, disc_h, sha_h)
    if pdf.pages_count != 1:  # auto page break is off; a regression must not ship a 2-page report
        raise RuntimeError(f"report layout produced {pdf.pages_count} pages")
    return bytes(pdf.output())
