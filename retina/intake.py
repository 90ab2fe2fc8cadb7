"""Untrusted bytes -> a decoded, gate-checked image -> the model's prepared input, shared by the API and batch scoring.

Steps, each failing with :class:`~retina.errors.ImageDecodeError` and a code of its own:

1. :func:`sniff` looks at the magic bytes (never at a file name or a client's Content-Type):
   zero bytes is ``empty_file``, anything but DICOM/JPEG/PNG/BMP/TIFF/WebP/GIF is
   ``unsupported_image``. Restricting formats also keeps PIL's rarer decoders (and any
   external helper they call) away from untrusted input.
2. :func:`decode_and_check` runs ``retina.decode.decode_image`` (EXIF, 16-bit, alpha, palette,
   CMYK; single-frame DICOM through ``retina.dicom``; truncated or multi-frame ->
   ``invalid_image``; over ``max_pixels`` -> ``image_too_large``) and the image gate on the
   decoded image.
3. :func:`prepare_image` / :func:`prepare_decoded` run ``prepare(img, spec)`` with the checkpoint's own spec, only for
   images the gate let through. The result is the ``uint8 (C, S, S)`` image that
   ``tail(spec)`` turns into the model input: together exactly ``eval_transform(spec)``.

The service (``backend/app/services/intake.py``) turns these errors into its HTTP answers; the
batch scorer (``scoring/batch.py``) into error rows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from PIL import Image

from retina.decode import decode_image
from retina.dicom import is_dicom
from retina.errors import ImageDecodeError
from retina.gate import GateResult, ImageGate
from retina.preprocessing import PreprocessSpec, pil_to_uint8_tensor, prepare

# (offset, magic) -> format. Checked in order, after DICOM (whose 128-byte preamble may hold
# anything, even one of these); RIFF needs its WEBP tag too.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
)
ACCEPTED_FORMATS = ("DICOM", "JPEG", "PNG", "BMP", "TIFF", "WebP", "GIF")


def sniff(data: bytes) -> str:
    """Container format from the magic bytes; ``ImageDecodeError`` ``empty_file`` / ``unsupported_image``."""
    if not data:
        raise ImageDecodeError("the file is empty", code="empty_file")
    if is_dicom(data):
        return "DICOM"
    for magic, fmt in _SIGNATURES:
        if data.startswith(magic):
            return fmt
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    raise ImageDecodeError(
        f"the file is not an image in a supported format ({', '.join(ACCEPTED_FORMATS)})", code="unsupported_image"
    )


@dataclass(frozen=True)
class DecodedImage:
    """A decoded, gate-checked image before model-specific preparation.

    Attributes:
        image: fully loaded PIL image in ``L`` or ``RGB`` mode, EXIF-upright.
        format: sniffed container format (``JPEG``, ``PNG``, ``DICOM`` ...).
        sha256: hex SHA-256 of the file's bytes (what the audit log and the batch rows store).
        gate: the image gate's verdict; None when the gate is off.
    """

    image: Image.Image
    format: str
    sha256: str
    gate: GateResult | None


@dataclass(frozen=True)
class PreparedImage:
    """An image ready for the model.

    Attributes:
        pixels: ``uint8 (C, S, S)``, the output of ``prepare`` (values 0-255).
        original_size: ``(width, height)`` of the decoded, EXIF-upright image.
        format: sniffed container format (``JPEG``, ``PNG`` ...).
        sha256: hex SHA-256 of the file's bytes.
        gate: the image gate's verdict (modality, gradability); None when the gate is off.
    """

    pixels: torch.Tensor
    original_size: tuple[int, int]
    format: str
    sha256: str
    gate: GateResult | None = None


def decode_and_check(
    data: bytes, max_pixels: int, gate: ImageGate | None, max_bytes: int | None = None
) -> DecodedImage:
    """Bytes -> decoded image plus the gate's verdict (CPU-bound); ``ImageDecodeError`` when not an image.

    ``max_bytes``: most decode memory (``retina.memory`` estimate from the header), None = unbounded.
    """
    fmt = sniff(data)
    img = decode_image(data, max_pixels=max_pixels, max_bytes=max_bytes)
    verdict = gate.assess(img) if gate is not None else None
    return DecodedImage(img, fmt, hashlib.sha256(data).hexdigest(), verdict)


def prepare_image(img: Image.Image, spec: PreprocessSpec) -> torch.Tensor:
    """Decoded image -> the model's prepared ``uint8 (C, S, S)`` input (CPU-bound); ``invalid_image`` if it fails."""
    try:
        prepared = prepare(img, spec)
    except (OSError, ValueError) as e:  # e.g. a degenerate 1-pixel image the resize cannot handle
        raise ImageDecodeError(f"image could not be preprocessed: {e}", code="invalid_image") from e
    return pil_to_uint8_tensor(prepared)


def prepare_decoded(decoded: DecodedImage, spec: PreprocessSpec) -> PreparedImage:
    """Decoded image -> the model's prepared ``uint8 (C, S, S)`` input with what is known of the file (CPU-bound)."""
    img = decoded.image
    return PreparedImage(prepare_image(img, spec), img.size, decoded.format, decoded.sha256, decoded.gate)
