"""The exam report: one PDF page with the patient's referral, each eye's answer and every image's line.

Prints what ``retina.exam`` decided (levels, headlines, advice, reasons, the rule in words) and the
disclaimer of ``retina.referral``: it computes no figure and writes no referral word of its own.
Upload names are not printed (they often carry a patient's name); images are numbered in upload
order. The single-image layout (CAM, model card figures) is ``backend/app/services/report/``; this
page is the exam summary a screening programme files.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from fpdf import FPDF

from backend.app.services.report import latin1
from retina.exam import EXAM_HEADLINE, RULE_TEXT, ExamAssessment, ExamItem, EyeResult
from retina.referral import DISCLAIMER, headline

_MARGIN = 15.0


def _line(pdf: FPDF, text: str, size: float = 9.5, style: str = "", h: float = 5.0) -> None:
    pdf.set_font("Helvetica", style, size)
    pdf.multi_cell(0, h, latin1(text), new_x="LMARGIN", new_y="NEXT")


def _headline(referral: Mapping[str, Any]) -> str:
    """The block's own headline (``retina.referral.headline`` of its level for a block written without one)."""
    return str(referral.get("headline") or headline(str(referral["level"])))


def _item_text(item: ExamItem) -> str:
    what = "OCT volume" if item.kind == "volume" else "image"
    head = f"#{item.index} {what} (eye from {item.laterality_source})"
    if item.error is not None:
        return f"{head}: refused, {item.error[0]}"
    a = item.assessment
    assert a is not None
    ref = a.referral or {}
    if not a.gradable:
        return f"{head}: ungradable ({ref.get('reason', '')})"
    conf = f" {a.confidence:.2f}" if a.confidence is not None else ""
    return f"{head}: {a.model} v{a.model_version}: {a.label}{conf}; {ref.get('level', 'n/a')} ({ref.get('reason', '')})"


def _eye_block(pdf: FPDF, eye: EyeResult, items: dict[int, ExamItem]) -> None:
    ref = eye.referral
    pdf.ln(2)
    _line(pdf, f"{EXAM_HEADLINE[eye.eye]}: {_headline(ref)}", 12, "B", 6)
    _line(pdf, str(ref["advice"]))
    _line(pdf, f"Why: {ref['reason']}", 8.5)
    if eye.label is not None and eye.confidence is not None:
        _line(pdf, f"Label {eye.label} ({eye.confidence:.2f}); {eye.n_gradable} of {len(eye.images)} images gradable")
    for i in eye.images:
        _line(pdf, "  " + _item_text(items[i]), 8.5, h=4.5)


def build_exam_report(exam: ExamAssessment, request_id: str, created: datetime | None = None) -> bytes:
    """The exam as a one-page (more if many images) A4 PDF."""
    created = created or datetime.now(UTC)
    pdf = FPDF(format="A4")
    pdf.set_margins(_MARGIN, _MARGIN, _MARGIN)
    pdf.set_auto_page_break(True, _MARGIN)
    pdf.add_page()
    _line(pdf, "RetinaScope screening exam report", 16, "B", 8)
    _line(pdf, f"{created:%Y-%m-%d %H:%M} UTC; request {request_id}", 8.5)
    pdf.ln(3)
    patient = exam.patient
    _line(pdf, f"Patient: {_headline(patient)}", 13, "B", 7)
    _line(pdf, str(patient["advice"]), 10.5)
    _line(pdf, f"Decided by: {patient['reason']}", 8.5)
    items = {i.index: i for i in exam.items}
    for eye in exam.eyes:
        _eye_block(pdf, eye, items)
    pdf.ln(3)
    _line(pdf, f"Rule: {RULE_TEXT}.", 8)
    pdf.ln(2)
    _line(pdf, DISCLAIMER, 8, "I", 4)
    return bytes(pdf.output())
