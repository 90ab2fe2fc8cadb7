"""The upload part of the Analyze page: the file uploader (the backend's size limit), the messages for files
left out, and a browser-displayable preview of each upload."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from typing import Any

import streamlit as st
from PIL import Image, ImageOps

from frontend.uploads import UPLOAD_TYPES, Upload, screen_uploads, uploader_limit_mb

log = logging.getLogger(__name__)

# Longest side of the preview sent to the browser: uploads can be large camera photos.
PREVIEW_MAX_PX = 1024


def upload_widget(limit_mb: float | None) -> list[Any]:
    """The file uploader, limited to the backend's ``limit_mb`` per file; returns Streamlit's uploaded files."""
    # A fixed label keeps the widget (and the uploads) when the user switches task or model. No type
    # filter and the backend's own size limit: screen() says on the page why a file is left out.
    return (
        st.file_uploader(
            "Upload scans",
            help=f"One or more images: {', '.join(UPLOAD_TYPES)}"
            + (f", at most {limit_mb:g} MB each (the backend's limit)." if limit_mb is not None else "."),
            accept_multiple_files=True,
            max_upload_size=uploader_limit_mb(limit_mb),
            key="uploads",
        )
        or []
    )


def screen(files: Sequence[Any], limit_mb: float | None) -> list[Upload]:
    """The uploads to send; an error on the page for each file left out (type, size, duplicate)."""
    keep, problems = screen_uploads([Upload.from_uploaded(f) for f in files], limit_mb)
    for problem in problems:
        st.error(problem, icon=":material/block:")
    return keep


@st.cache_data(max_entries=64, show_spinner=False)
def preview_png(digest: str, _data: bytes) -> bytes | None:
    """A browser-displayable PNG of an upload (TIFF, 16-bit and CMYK are not), at most 1024 px.

    Returns ``None`` when Pillow cannot read it; the backend then explains why with its own error.
    """
    try:
        with Image.open(io.BytesIO(_data)) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16-bit grayscale: scale to 8 bits for display only.
                img = img.point(lambda v: v / 256).convert("L")
            elif img.mode not in ("L", "RGB"):
                img = img.convert("RGB")
            img.thumbnail((PREVIEW_MAX_PX, PREVIEW_MAX_PX))
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            return buf.getvalue()
    except Exception:  # untrusted upload: any decoder failure just means "no preview"
        log.info("no preview for upload %s", digest[:12], exc_info=True)
        return None


def render_preview(up: Upload) -> None:
    png = preview_png(up.digest, up.data)
    if png is None:
        st.caption("No preview: the browser cannot show this file.")
    else:
        st.image(png, caption="Uploaded image", width="stretch")
