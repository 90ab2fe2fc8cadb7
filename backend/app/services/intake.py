"""Untrusted upload -> prepared model input, with every failure a :class:`ServiceError` of its own code.

Steps, each with its own error code:

1. :func:`read_upload` reads the multipart file in 1 MB chunks and stops one byte past the
   limit (413 ``file_too_large``); the ASGI middleware in ``main.py`` has already refused a
   body whose Content-Length, or streamed size, is over the limit before it was spooled.
2. :func:`sniff` looks at the magic bytes (never at the client's Content-Type): zero bytes
   is 422 ``empty_file``, anything but DICOM/JPEG/PNG/BMP/TIFF/WebP/GIF is 415
   ``unsupported_media_type``.
3. :func:`decode_and_check` decodes (truncated -> 422 ``invalid_image``; over ``max_image_pixels``
   -> 422 ``image_too_large``) and runs the image gate on the decoded image. A multi-frame DICOM
   is refused there (422 ``invalid_image``, pointing to ``/predict/volume`` and ``frame=``) unless a
   ``frame`` is asked for: then only that frame is decoded.
4. :func:`decode_volume` is step 3 for ``/predict/volume``: frame count and total pixels checked
   before any pixel is decoded (413 ``too_many_frames``, 422 ``image_too_large``), then each frame
   decoded, gated and prepared in turn, so only the ``S x S`` model inputs are kept.
5. :func:`prepare_decoded` runs ``prepare(img, spec)`` with the checkpoint's own spec, only for
   images the gate let through.

Steps 2, 3 and 5 for single images are ``retina.intake`` (the batch scorer runs the same ones);
this module adds the upload reading, frames and volumes, and turns the core's
``ImageDecodeError`` into the service's error codes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from backend.app.core.config import Settings
from backend.app.services.errors import ServiceError, file_too_large, from_decode_error
from retina import intake
from retina.dicom import DicomFrames, MultiFrameError, open_frames
from retina.gate import GateResult, ImageGate
from retina.intake import ACCEPTED_FORMATS, DecodedImage, PreparedImage
from retina.memory import check_decode_budget, estimate
from retina.preprocessing import ImageDecodeError, PreprocessSpec, decode_image, pil_to_uint8_tensor, prepare

__all__ = [
    "ACCEPTED_FORMATS",
    "DecodedImage",
    "DecodedVolume",
    "Limits",
    "PreparedImage",
    "Upload",
    "Checked",
    "decode_and_check",
    "decode_gate_prepare",
    "decode_volume",
    "prepare_decoded",
    "read_upload",
    "sniff",
]

_CHUNK = 1 << 20


class Upload(Protocol):
    """An uploaded file being received (Starlette's ``UploadFile`` is one)."""

    filename: str | None

    async def read(self, size: int = -1) -> bytes: ...


class Replay:
    """An upload already read into memory, read again by the single-image path (``Upload`` protocol)."""

    def __init__(self, filename: str | None, data: bytes) -> None:
        self.filename = filename
        self._data = data
        self._pos = 0

    async def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else min(len(self._data), self._pos + size)
        chunk, self._pos = self._data[self._pos : end], end
        return chunk


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


@dataclass(frozen=True)
class Limits:
    """What one upload may cost (``Settings``): a single image's, and a volume's, bytes and pixels.

    ``max_pixels`` and ``max_bytes`` bound a single image and every frame of a volume; the volume
    limits apply only to a multi-frame DICOM (``frame=`` on a PNG/JPEG keeps the image limits).
    """

    max_pixels: int
    max_bytes: int
    max_decode_bytes: int
    max_volume_pixels: int
    max_volume_frames: int

    @classmethod
    def of(cls, s: Settings) -> Limits:
        return cls(s.max_image_pixels, s.max_upload_bytes, s.max_decode_bytes, s.max_volume_pixels, s.max_volume_frames)


def decode_and_check(data: bytes, limits: Limits, gate: ImageGate | None, frame: int | None = None) -> DecodedImage:
    """Bytes -> decoded image plus the gate's verdict (CPU-bound: run it in the decode pool).

    ``frame``: the 0-based frame of a multi-frame DICOM to decode (only that one is); frame 0 of a
    single image is the image itself. The volume limits bound a multi-frame DICOM as a whole; its
    frame, and any single image, stays within the single-image limits.
    """
    try:
        if frame is None:
            if len(data) > limits.max_bytes:
                raise file_too_large(limits.max_bytes)
            return intake.decode_and_check(data, limits.max_pixels, gate, limits.max_decode_bytes)
        fmt = intake.sniff(data)
        if fmt == "DICOM":
            frames = _open_volume(data, limits)
            if frames.n_frames == 1 and len(data) > limits.max_bytes:
                raise file_too_large(limits.max_bytes, "a single-frame DICOM")
            img = frames.frame(frame)
        elif frame == 0:
            if len(data) > limits.max_bytes:
                raise file_too_large(
                    limits.max_bytes, f"a {fmt} (frame= lifts the limits only for a multi-frame DICOM)"
                )
            img = decode_image(data, max_pixels=limits.max_pixels, max_bytes=limits.max_decode_bytes)
        else:
            raise ServiceError(422, "invalid_parameter", f"frame={frame}: the upload is a single image (frame 0)")
    except MultiFrameError as e:
        raise ServiceError(
            422,
            "invalid_image",
            f"{e.detail}. An OCT volume goes to POST /predict/volume; /gradcam and /report take one of its "
            f"B-scans with frame=0..{e.frames - 1}",
        ) from e
    except ImageDecodeError as e:
        raise from_decode_error(e) from e
    verdict = gate.assess(img) if gate is not None else None
    return DecodedImage(img, fmt, hashlib.sha256(data).hexdigest(), verdict)


def _open_volume(data: bytes, limits: Limits) -> DicomFrames:
    """A DICOM's frames within the volume limits, each frame within the single image's pixels and decode memory."""
    check_decode_budget(estimate(data), limits.max_decode_bytes)
    frames = open_frames(data, limits.max_volume_pixels, limits.max_volume_frames)
    if frames.rows * frames.cols > limits.max_pixels:
        raise ImageDecodeError(
            f"each frame is {frames.cols}x{frames.rows} = {frames.rows * frames.cols} pixels, over the "
            f"single-image limit of {limits.max_pixels} (RETINA_MAX_IMAGE_PIXELS)",
            code="image_too_large",
        )
    return frames


@dataclass(frozen=True)
class DecodedVolume:
    """A volume's frames after the gate and the model's preparation.

    Attributes:
        verdicts: the gate's verdict per frame (None when the gate is off), in frame order.
        prepared: frame index -> ``uint8 (C, S, S)`` model input, for the frames the gate let through
            (modality ``task`` and gradable).
        sha256: hex SHA-256 of the uploaded bytes.
        frame_size: ``(width, height)`` of one frame.
    """

    verdicts: list[GateResult | None]
    prepared: dict[int, torch.Tensor]
    sha256: str
    frame_size: tuple[int, int]


def decode_volume(
    data: bytes, limits: Limits, gate: ImageGate | None, spec: PreprocessSpec, task: str
) -> DecodedVolume:
    """A multi-frame DICOM -> every frame gated, the gradable ones of ``task`` prepared (decode pool).

    Frames are decoded one at a time and dropped once prepared: memory holds the upload and the
    ``S x S`` inputs, never the whole decoded volume. A single image is a volume of one frame.
    """
    fmt = sniff(data)
    if fmt != "DICOM":
        raise ServiceError(
            415, "unsupported_media_type", f"a volume is a multi-frame DICOM file; this is {fmt} (use POST /predict)"
        )
    try:
        frames = _open_volume(data, limits)
        verdicts: list[GateResult | None] = []
        prepared: dict[int, torch.Tensor] = {}
        for i in range(frames.n_frames):
            img = frames.frame(i)
            verdict = gate.assess(img) if gate is not None else None
            verdicts.append(verdict)
            if verdict is None or (verdict.modality == task and verdict.gradable):
                prepared[i] = pil_to_uint8_tensor(prepare(img, spec))
    except ImageDecodeError as e:
        raise from_decode_error(e) from e
    except (OSError, ValueError) as e:  # a degenerate frame the resize cannot handle
        raise ServiceError(422, "invalid_image", f"a frame could not be preprocessed: {e}") from e
    return DecodedVolume(verdicts, prepared, hashlib.sha256(data).hexdigest(), (frames.cols, frames.rows))


@dataclass(frozen=True)
class Checked:
    """One upload after :func:`decode_gate_prepare`: the full-size image is gone, the model input kept.

    Attributes:
        sha256: hex SHA-256 of the upload.
        gate: the gate's verdict (None when the gate is off).
        prepared: the model's ``uint8 (C, S, S)`` input, or None when ``choose`` refused the image.
    """

    sha256: str
    gate: GateResult | None
    prepared: PreparedImage | None


def decode_gate_prepare(
    data: bytes,
    limits: Limits,
    gate: ImageGate | None,
    choose: Callable[[GateResult | None], PreprocessSpec | None],
    frame: int | None = None,
) -> Checked:
    """Decode, gate and prepare in one decode-pool job (CPU-bound).

    ``choose(verdict)`` picks the spec of the model that will score the image, or None to refuse
    it. One job, not three: the decoded full-size image (up to ``RETINA_MAX_DECODE_MB``) is freed
    before this pool thread starts the next decode, so at most ``decode_threads`` of them exist.
    """
    decoded = decode_and_check(data, limits, gate, frame)
    spec = choose(decoded.gate)
    prepared = prepare_decoded(decoded, spec) if spec is not None else None
    return Checked(decoded.sha256, decoded.gate, prepared)


def prepare_decoded(decoded: DecodedImage, spec: PreprocessSpec) -> PreparedImage:
    """Decoded image -> the model's prepared ``uint8 (C, S, S)`` input (CPU-bound)."""
    try:
        return intake.prepare_decoded(decoded, spec)
    except ImageDecodeError as e:
        raise from_decode_error(e) from e
