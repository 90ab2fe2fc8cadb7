"""Pure text and table helpers of the exam page (``app_pages/exam.py``); tests import them without Streamlit.

The page prints what the backend decided (levels, advice, reasons): nothing here computes a figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

EYE_CHOICES: dict[str, str] = {
    "From the DICOM header or the file name": "",
    "Right eye (OD)": "right",
    "Left eye (OS)": "left",
}
EYE_TITLES = {"right": "Right eye (OD)", "left": "Left eye (OS)"}
# Streamlit's message kinds by referral level: the most urgent in red, "retake" in amber.
SEVERITY = {
    "urgent": "error",
    "refer": "error",
    "routine": "warning",
    "ungradable": "warning",
    "not_informative": "info",
    "rescreen_12_months": "success",
    "observation": "success",
}


def severity(level: str | None) -> str:
    return SEVERITY.get(level or "", "info")


def level_title(level: str | None) -> str:
    return (level or "n/a").replace("_", " ").capitalize()


def eye_summary(eye: Mapping[str, Any]) -> str:
    """``"2 of 2 images gradable; decided by image 1 (Moderate, 0.71)"`` for one eye's answer."""
    head = f"{eye['n_gradable']} of {eye['n_images']} images gradable"
    if eye.get("deciding_image") is None:
        return head
    conf = eye.get("confidence")
    label = f"{eye.get('label')}" + (f", {conf:.2f}" if isinstance(conf, (int, float)) else "")
    return f"{head}; decided by image {eye['deciding_image']} ({label})"


def image_rows(images: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One table row per uploaded file, in upload order."""
    rows = []
    for img in images:
        result = img.get("result") or {}
        error = img.get("error") or {}
        referral = result.get("referral") or {}
        rows.append(
            {
                "#": img["index"],
                "file": img.get("filename") or "",
                "eye": img["eye"],
                "eye from": img["laterality_source"],
                "kind": img["kind"],
                "gradable": img["gradable"],
                "label": result.get("label") or "",
                "referral": referral.get("level") or error.get("error") or "",
            }
        )
    return rows
