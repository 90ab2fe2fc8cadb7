"""Text for the page: latin-1 for fpdf2's core fonts, lines cut or wrapped to a width, numbers and times.

fpdf2's core fonts (Helvetica, Courier) cover latin-1 only, so every text goes through
:func:`latin1` first: a class named ``"Drusen–α"`` prints as ``"Drusen-?"`` instead of raising.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime
from pathlib import PureWindowsPath

from fpdf import FPDF
from fpdf.enums import MethodReturnValue

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


def timestamp(created: datetime) -> str:
    """ISO 8601 UTC to the second, ``2026-11-22T10:15:03Z``; naive datetimes are taken as UTC."""
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def prob_text(p: float) -> str:
    """How every probability is printed: 3 decimals (``0.831``)."""
    return f"{p:.3f}"


def fit_text(pdf: FPDF, text: str, width: float) -> str:
    """``text`` cut with ``...`` so that it fits ``width`` mm in the current font."""
    if pdf.get_string_width(text) <= width:
        return text
    while text and pdf.get_string_width(text + "...") > width:
        text = text[:-1]
    return text.rstrip() + "..."


def wrap(pdf: FPDF, text: str, width: float, max_lines: int) -> list[str]:
    """``text`` word-wrapped to ``width`` mm in the current font, at most ``max_lines`` (last one ellipsised)."""
    # Wrapped to width - 2 * c_margin, the same room Page.text gives a line in a cell of that width.
    lines = pdf.multi_cell(width, 1, text, dry_run=True, output=MethodReturnValue.LINES)
    lines = [ln for ln in lines if ln.strip()] or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = fit_text(pdf, lines[-1] + " ...", width - 2 * pdf.c_margin)
    return lines


def base_name(filename: str) -> str:
    """The base name of a client-supplied path (``/`` or ``\\`` separators), never its folders."""
    return PureWindowsPath(filename).name
