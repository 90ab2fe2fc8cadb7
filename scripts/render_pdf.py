#!/usr/bin/env python
"""Render one page of a PDF to a PNG (pypdfium2), e.g. to look at a sample report.

    python scripts/render_pdf.py report.pdf report.png --scale 2 --page 1

``--scale 1`` is 72 dpi; 2 (default) gives a readable A4 page of 1190 x 1684 px.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pypdfium2 as pdfium

log = logging.getLogger("render_pdf")


def render_page(pdf_path: Path, png_path: Path, scale: float = 2.0, page: int = 1) -> tuple[int, int]:
    """Render page ``page`` (1-based) of ``pdf_path`` to ``png_path``; returns ``(width, height)`` in px."""
    doc = pdfium.PdfDocument(str(pdf_path))
    try:
        if not 1 <= page <= len(doc):
            raise ValueError(f"{pdf_path} has {len(doc)} page(s), asked for page {page}")
        bitmap = doc[page - 1].render(scale=scale)
        image = bitmap.to_pil()
        png_path.parent.mkdir(parents=True, exist_ok=True)
        image.save(png_path)
        return image.size
    finally:
        doc.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pdf", type=Path, help="PDF file to render")
    parser.add_argument("png", type=Path, help="PNG file to write")
    parser.add_argument("--scale", type=float, default=2.0, help="pixels per PDF point (1 = 72 dpi; default 2)")
    parser.add_argument("--page", type=int, default=1, help="1-based page number (default 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.scale <= 0:
        parser.error("--scale must be positive")
    try:
        width, height = render_page(args.pdf, args.png, args.scale, args.page)
    except (OSError, ValueError, pdfium.PdfiumError) as exc:
        log.error("%s", exc)
        return 1
    log.info("wrote %s (%d x %d px, page %d of %s)", args.png, width, height, args.page, args.pdf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
