"""The A4 page the report is drawn on: its geometry (mm), colours, the text limits tried loosest first, and
:class:`Page`, a thin fpdf2 surface whose helpers keep every text inside its box."""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime

from fpdf import FPDF
from PIL import Image

from backend.app.services.report.text import fit_text, wrap

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
# The images shrink (down to IMAGE_MIN) before the texts are clipped harder (see LIMITS).
IMAGE_COMFORT = 60.0

# ----------------------------------------------------------------------------- colours
INK: RGB = (33, 33, 33)
MUTED: RGB = (110, 110, 110)
RULE: RGB = (200, 200, 200)
BAR_BG: RGB = (232, 232, 232)
BAR_FG: RGB = (96, 125, 139)
BAR_TOP: RGB = (38, 70, 83)
HIGHLIGHT: RGB = (240, 244, 246)
# level -> (strong colour, tint): urgent red, refer/routine amber, observation/rescreen green, the rest grey.
# Only colours: the level's words (headline, advice) come with the referral, from retina.referral.
RED, AMBER, GREEN, GREY = (
    ((183, 28, 28), (253, 236, 234)),
    ((178, 106, 0), (255, 243, 224)),
    ((46, 125, 50), (232, 245, 233)),
    ((97, 97, 97), (238, 238, 238)),
)
LEVEL_COLOURS: dict[str, tuple[RGB, RGB]] = {
    "urgent": RED,
    "refer": AMBER,
    "routine": AMBER,
    "observation": GREEN,
    "rescreen_12_months": GREEN,
    "ungradable": GREY,
    "not_informative": GREY,
}
HEADING_H = 8.0  # a section heading with its rule


def pil_rgb(png: bytes) -> tuple[Image.Image, tuple[int, int]]:
    """PNG (any mode) -> (RGB PIL image with longest side <= ``IMAGE_MAX_PX``, original ``(width, height)``)."""
    with Image.open(io.BytesIO(png)) as im:
        im.load()
        rgb = im.convert("RGB")
    size = rgb.size
    if max(size) > IMAGE_MAX_PX:
        rgb.thumbnail((IMAGE_MAX_PX, IMAGE_MAX_PX), Image.Resampling.LANCZOS)
    return rgb, size


@dataclass(frozen=True)
class Limits:
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
LIMITS = (
    Limits(
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
    Limits(
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
    Limits(
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


class Page:
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
        return wrap(self.pdf, text, width, max_lines)

    def text(self, x: float, y: float, w: float, h: float, text: str, align: str = "L") -> None:
        """One line of (already sanitised) text in the box ``(x, y, w, h)``, cut to fit."""
        self.pdf.set_xy(x, y)
        self.pdf.cell(w, h, fit_text(self.pdf, text, w - 2 * self.pdf.c_margin), align=align)

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
