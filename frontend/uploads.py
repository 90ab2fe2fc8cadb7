"""Uploaded files before they are sent: identity (SHA-256), the types and size the backend takes, duplicates.

Pure (no Streamlit): ``Upload.from_uploaded`` reads any object with ``name`` and ``getvalue()``, as
Streamlit's ``UploadedFile`` has.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

# "dcm": single-frame DICOM, decoded by the backend (the browser gets no preview of it).
UPLOAD_TYPES = ["jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp", "dcm"]


def file_digest(data: bytes) -> str:
    """Hex SHA-256 of an upload: the cache identity of an image."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Upload:
    """One uploaded file: name, raw bytes, SHA-256 and a stable widget-key suffix."""

    name: str
    data: bytes
    digest: str
    key: str

    @classmethod
    def from_uploaded(cls, f: Any) -> Upload:
        data = f.getvalue()
        # file_id is unique per upload, so two uploads of the same bytes get separate widgets.
        return cls(name=f.name, data=data, digest=file_digest(data), key=str(getattr(f, "file_id", f.name)))


def uploader_limit_mb(limit_mb: float | None) -> int | None:
    """The file uploader's whole-MB limit for the backend's ``limit_mb`` (``None``: Streamlit's default).

    Streamlit takes an int; rounding up keeps files the backend accepts, and :func:`screen_uploads`
    refuses the few bytes between the two with the backend's own figure.
    """
    if limit_mb is None:
        return None
    return max(1, math.ceil(limit_mb))


def screen_uploads(uploads: Sequence[Upload], limit_mb: float | None) -> tuple[list[Upload], list[str]]:
    """Uploads to send, and a message for each one left out: a type the backend cannot read, over the
    backend's size limit, or the same bytes as an earlier upload (which would be scored and audited twice).

    The uploader accepts every type on purpose: its own type filter refuses a file silently (the reason
    only in a tooltip), while these messages are shown on the page.
    """
    keep: list[Upload] = []
    problems: list[str] = []
    seen: dict[str, str] = {}
    allowed = ", ".join(f".{t}" for t in UPLOAD_TYPES)
    for up in uploads:
        suffix = PurePath(up.name).suffix.lower().lstrip(".")
        if suffix not in UPLOAD_TYPES:
            problems.append(f"{up.name}: not an image this service reads ({allowed}); it was not sent.")
        elif limit_mb is not None and len(up.data) > limit_mb * 1_000_000:
            size = len(up.data) / 1e6
            problems.append(f"{up.name} is {size:.1f} MB, over the limit of {limit_mb:g} MB per file; it was not sent.")
        elif up.digest in seen:
            problems.append(f"{up.name} is the same file as {seen[up.digest]}; it is shown once.")
        else:
            seen[up.digest] = up.name
            keep.append(up)
    return keep, problems
