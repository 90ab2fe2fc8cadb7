"""The one-page PDF report of one image's result: what it shows (:mod:`.content`), its blocks (:mod:`.blocks`)
on an A4 page (:mod:`.page`) laid out to fit (:mod:`.layout`), with text made printable (:mod:`.text`).

The referral's words on the page (headline, advice, operating-point sentence, disclaimer) are
``retina.referral``'s; this package only places them.
"""

from __future__ import annotations

from backend.app.services.report.content import ONE_PAGE_SKIPS, ReportInput, VolumeSummary, report_metrics
from backend.app.services.report.layout import build_report
from backend.app.services.report.text import latin1

# ReportInput.disclaimer defaults to it; re-exported so that callers written before it had a default keep working.
from retina.referral import DISCLAIMER

__all__ = [
    "DISCLAIMER",
    "ONE_PAGE_SKIPS",
    "ReportInput",
    "VolumeSummary",
    "build_report",
    "latin1",
    "report_metrics",
]
