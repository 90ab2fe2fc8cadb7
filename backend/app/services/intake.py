"""Untrusted upload -> prepared model input, with every failure a :class:`ServiceError` of its own code.

Steps, each with its own error code:

1. :func:`read_upload` reads the multipart file in 1 MB chunks and stops one byte past the
   limit (413 ``file_too_large``); the ASGI middleware in ``main.py`` has already refused a
   body whose Content-Length, or streamed size, is over the limit before it was spooled.
2. :func:`sniff` looks at the magic bytes (never at the client's Content-Type): zero bytes
   is 422 ``empty_file``, anything but DICOM/JPEG/PNG/BMP/TIFF/WebP/GIF is 415
   ``unsupported_media_type``.
3. :func:`decode_and_check` decodes (truncated or multi-frame -> 422 ``invalid_image``; over
   ``max_image_pixels`` -> 422 ``image_too_large``) and runs the image gate on the decoded image.
4. :func:`prepare_decoded` runs ``prepare(img, spec)`` with the checkpoint's own spec, only for
   images the gate let through.

Steps 2-4 are ``retina.intake`` (the batch scorer runs the same ones); this module adds the
upload reading and turns the core's ``ImageDecodeError`` into the service's error codes.
"""

from __future__ import annotations

from typing import Protocol

from backend.app.services.errors import file_too_large, from_decode_error
from retina import intake
from retina.gate import ImageGate
from retina.intake import ACCEPTED_FORMATS, DecodedImage, PreparedImage
from retina.preprocessing import ImageDecodeError, PreprocessSpec

__all__ = [
    "ACCEPTED_FORMATS",
    "DecodedImage",
    "PreparedImage",
    "Upload",
    "decode_and_check",
    "prepare_decoded",
    "read_upload",
    "sniff",
]

_CHUNK = 1 << 20


class Upload(Protocol):
    """An uploaded file being received (Starlette's ``UploadFile`` is one)."""

    filename: str | None

    async def read(self, size: int = -1) -> bytes: ...


async def read_upload(upload: Upload, limit: int) -> bytes:
    """The upload's bytes, refusing (413) as soon as more than ``limit`` bytes were read."""
    parts: list[bytes] = []
    total = 0
    while True:
        chunk = await upload.read(min(_CHUNK, limit + 1 - total))
        if not chunk:
            break
        total += len(chunk)
        if total > limit:
            name = f"file {upload.filename!r}" if upload.filename else "upload"
            raise file_too_large(limit, name)
        parts.append(chunk)
    return b"".join(parts)


def sniff(data: bytes) -> str:
    """Container format from the magic bytes; raises 422 ``empty_file`` / 415 ``unsupported_media_type``."""
    try:
        return intake.sniff(data)
    except ImageDecodeError as e:
        raise from_decode_error(e) from e


def decode_and_check(data: bytes, max_pixels: int, gate: ImageGate | None) -> DecodedImage:
    """Bytes -> decoded image plus the gate's verdict (CPU-bound: run it in the decode pool)."""
    try:
        return intake.decode_and_check(data, max_pixels, gate)
    except ImageDecodeError as e:
        raise from_decode_error(e) from e


def prepare_decoded(decoded: DecodedImage, spec: PreprocessSpec) -> PreparedImage:
    """Decoded image -> the model's prepared ``uint8 (C, S, S)`` input (CPU-bound)."""
    try:
        return intake.prepare_decoded(decoded, spec)
    except ImageDecodeError as e:
        raise from_decode_error(e) from e
