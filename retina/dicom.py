"""DICOM input: frames of a DICOM file -> 8-bit PIL images, without leaking patient data.

Ophthalmic devices export fundus photos as *Ophthalmic Photography* and OCT B-scans as
*Ophthalmic Tomography* or *Secondary Capture* objects; PACS viewers export screenshots as
Secondary Capture. Any SOP class with an Image Pixel module is accepted here:

* :func:`decode_dicom`: a single-frame file -> one image (a multi-frame file is refused with
  :class:`MultiFrameError`, which says how many frames it holds);
* :func:`open_frames`: any file -> :class:`DicomFrames`, whose :meth:`~DicomFrames.frame`
  decodes one frame when asked (an OCT volume of 128 B-scans is never expanded at once).
  Ophthalmic Tomography Image Storage is an enhanced multi-frame IOD: its windowing and
  rescale live in the Shared / Per-frame Functional Groups (Frame VOI LUT, Pixel Value
  Transformation), and each frame is windowed with its own values, exactly as a single
  frame is. Multi-frame Secondary Capture carries them at the top level, for every frame.

Pixel values -> 8 bit (modality LUT, VOI, palette, colour) is ``retina.dicom_pixels``.

Accepted transfer syntaxes: native (implicit/explicit VR little endian, explicit big endian),
JPEG Baseline (decoded by Pillow, the same libjpeg as JPEG uploads) and RLE Lossless.
Deflated files are refused before anything is inflated (zip bomb); other codecs get a clear
``unsupported_image`` error.

Untrusted input: ``Rows * Columns * NumberOfFrames`` is checked against ``max_pixels`` before
any pixel data is decoded, a JPEG frame's own size must match the header, and RLE segments are
measured before pydicom expands them. :func:`open_frames` also bounds ``NumberOfFrames``
(``max_frames``, code ``too_many_frames``) before any frame is decoded.

Privacy: only the image-pixel, modality-LUT and VOI elements are parsed (``specific_tags``),
so identifying elements (PatientName, PatientID, ...) are skipped unread. Error messages
carry only technical values from a known vocabulary (sizes, bit depths, photometric
interpretation, transfer syntax name); pydicom's own exceptions, warnings and log records,
which may quote element values, are never passed on.
"""

from __future__ import annotations

import io
import logging
import struct
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from retina.dicom_guard import DEFAULT_BUDGET, HeaderBudget, check_budget
from retina.dicom_pixels import COLOUR, MONO, PALETTE, int_element, to_8bit
from retina.errors import ImageDecodeError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

PREAMBLE_LEN = 128
MAGIC = b"DICM"
# A conformant file's File Meta group (0002,xxxx, explicit VR little endian) follows "DICM".
_META_GROUP = b"\x02\x00"
# Files written without the 128-byte preamble are accepted only when they open with the
# File Meta group itself: (0002,0000) UL length 4, or (0002,0001) OB. Those 8 bytes start no
# other accepted format, and they carry the transfer syntax, unlike bare ACR-NEMA streams.
_NO_PREAMBLE_STARTS = (b"\x02\x00\x00\x00UL\x04\x00", b"\x02\x00\x01\x00OB\x00\x00")

# Transfer syntax UID -> how the pixel data is stored.
_NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
_JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
_RLE = "1.2.840.10008.1.2.5"
_DEFLATED = "1.2.840.10008.1.2.1.99"
_SUPPORTED_SYNTAXES = ("native (uncompressed)", "JPEG Baseline", "RLE Lossless")

# Every defined value, so an unsupported one can be named without echoing arbitrary text.
_KNOWN_PHOTOMETRIC = (
    *MONO,
    *COLOUR,
    PALETTE,
    "YBR_PARTIAL_422",
    "YBR_PARTIAL_420",
    "YBR_ICT",
    "YBR_RCT",
    "HSV",
    "ARGB",
    "CMYK",
)

# The only elements parsed from the dataset body. Everything else, identifiers included,
# is skipped unread by pydicom (Specific Character Set is always added by pydicom).
_TAGS = [
    "SOPClassUID",
    # Enhanced multi-frame IODs (Ophthalmic Tomography): per-frame windowing and rescale.
    # Their items hold frame geometry and pixel-value transforms, no patient module.
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
    "RedPaletteColorLookupTableDescriptor",
    "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor",
    "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData",
    "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData",
    "PixelData",
    "FloatPixelData",
    "DoubleFloatPixelData",
]


# The most pixels any decoder (this one, retina.decode's PIL path) accepts: a decompression-bomb guard.
DEFAULT_MAX_PIXELS = 50_000_000


def is_dicom(data: bytes) -> bool:
    """True for a DICOM Part 10 file: ``DICM`` at offset 128 followed by the File Meta group.

    The 128-byte preamble may hold anything (even another format's magic), so callers must
    test this before other signatures. Files without the preamble are recognised only when
    they start with the File Meta group (see ``_NO_PREAMBLE_STARTS``).
    """
    head = data[PREAMBLE_LEN : PREAMBLE_LEN + 6]
    return (head[:4] == MAGIC and head[4:6] == _META_GROUP) or data.startswith(_NO_PREAMBLE_STARTS)


def number_of_frames(data: bytes) -> int:
    """``NumberOfFrames`` of a DICOM file (1 when absent or unreadable); only that element is parsed."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["NumberOfFrames"])
        return int(ds.get("NumberOfFrames") or 1)
    except Exception:  # an unreadable header is the decoder's to refuse, with its own code
        return 1


# ----------------------------------------------------------------------------- silence


_quiet = threading.local()


class _DropWhileDecoding(logging.Filter):
    """Drops pydicom's log records emitted by a thread that is inside :func:`decode_dicom`.

    pydicom logs (and warns) invalid element values verbatim; a filter keyed on a
    thread-local flag keeps other threads' (and other callers') pydicom logging untouched.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_quiet, "active", False)


_FILTER = _DropWhileDecoding()

# pydicom's warnings may quote element values, so decoding runs under catch_warnings().
# That swaps process-global state and two overlapping blocks (decodes run in a thread pool)
# can restore each other's filters wrongly, leaving warnings off for good: one at a time.
_WARNINGS_LOCK = threading.Lock()


@contextmanager
def _silenced() -> Iterator[None]:
    """No pydicom log record or warning (which may quote element values) escapes this block."""
    # Filters on a logger do not see records propagated from its children, so every
    # pydicom logger gets one (addFilter ignores duplicates; new children appear on import).
    # tuple() copies the dict atomically: another thread may be creating loggers meanwhile.
    for name in [n for n in tuple(logging.root.manager.loggerDict) if n == "pydicom" or n.startswith("pydicom.")]:
        logging.getLogger(name).addFilter(_FILTER)
    _quiet.active = True
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        _quiet.active = False


# ----------------------------------------------------------------------------- decoding


class MultiFrameError(ImageDecodeError):
    """A multi-frame file sent where one image is expected; ``frames`` says how many it holds."""

    def __init__(self, detail: str, frames: int) -> None:
        super().__init__(detail, code="invalid_image")
        self.frames = frames


def decode_dicom(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """DICOM bytes -> fully loaded PIL image, mode ``L`` (monochrome) or ``RGB``, 8 bit.

    Raises :class:`ImageDecodeError` with code ``invalid_image`` (truncated, corrupt,
    no pixel data; :class:`MultiFrameError` for multi-frame), ``image_too_large`` (over
    ``max_pixels`` before decoding) or ``unsupported_image`` (codec or pixel format not
    handled). Messages never contain element values other than technical ones.
    """
    frames = open_frames(data, max_pixels)
    if frames.n_frames > 1:
        raise MultiFrameError(
            f"multi-frame DICOM ({frames.n_frames} frames) is not supported here; send a single frame "
            "(one B-scan or photo)",
            frames.n_frames,
        )
    return frames.frame(0)


class DicomFrames:
    """A parsed, header-checked DICOM file whose frames are decoded one at a time, on request.

    Only ``_TAGS`` were read. ``n_frames`` frames of ``rows x cols``; :meth:`frame` returns frame
    ``i`` as an 8-bit ``L`` or ``RGB`` image, windowed with that frame's own VOI / rescale.
    """

    def __init__(self, ds: Dataset, rows: int, cols: int, n_frames: int, photometric: str) -> None:
        self._ds = ds
        self.rows, self.cols, self.n_frames = rows, cols, n_frames
        self._photometric = photometric

    def frame(self, index: int) -> Image.Image:
        """Frame ``index`` (0-based) -> PIL ``L``/``RGB``; raises ``ImageDecodeError`` as :func:`decode_dicom`."""
        if not 0 <= index < self.n_frames:
            raise ImageDecodeError(f"frame {index} does not exist: the file has frames 0-{self.n_frames - 1}")
        with _silenced():
            arr, photometric = _decode_frame(self._ds, self.rows, self.cols, self._photometric, index, self.n_frames)
            out = to_8bit(arr, _frame_view(self._ds, index), photometric)
        return Image.fromarray(np.ascontiguousarray(out), mode="L" if out.ndim == 2 else "RGB")

    def __len__(self) -> int:
        return self.n_frames

    def __iter__(self) -> Iterator[Image.Image]:
        """Frames in order, each decoded only when the loop reaches it."""
        return (self.frame(i) for i in range(self.n_frames))


def open_frames(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_frames: int | None = None,
    budget: HeaderBudget = DEFAULT_BUDGET,
) -> DicomFrames:
    """Parse and check a DICOM file (single- or multi-frame) without decoding any pixel data.

    ``Rows * Columns * NumberOfFrames`` over ``max_pixels`` -> ``image_too_large``; more than
    ``max_frames`` frames -> ``too_many_frames``; non-pixel data over ``budget`` ->
    ``dicom_header_too_large``, before pydicom reads any of it; otherwise as :func:`decode_dicom`.
    """
    try:
        import pydicom  # noqa: F401  (optional dependency: only DICOM uploads need it)
    except ImportError as e:  # pragma: no cover - pydicom is in the service's dependencies
        raise ImageDecodeError("DICOM support is not installed (pydicom)", code="unsupported_image") from e
    if not is_dicom(data):
        raise ImageDecodeError("not a DICOM file", code="unsupported_image")
    if data[PREAMBLE_LEN : PREAMBLE_LEN + 4] != MAGIC:
        # Preamble-less variant: give it an empty preamble so pydicom parses it normally.
        data = b"\x00" * PREAMBLE_LEN + MAGIC + data
    # Outside the lock below, and before pydicom: its reader spends seconds on a file of many items.
    check_budget(data, budget)
    with _silenced():
        ds = _read_dataset(data)
        rows, cols, frames, photometric = _check_header(ds, max_pixels, max_frames)
    return DicomFrames(ds, rows, cols, frames, photometric)


def _read_dataset(data: bytes) -> Dataset:
    """Parse the File Meta group, check the transfer syntax, then read only ``_TAGS``."""
    from pydicom import dcmread
    from pydicom.filereader import read_dataset
    from pydicom.uid import UID

    fp = io.BytesIO(data)
    fp.seek(PREAMBLE_LEN + len(MAGIC))
    try:
        # Group 0002 alone (always explicit VR little endian): the transfer syntax must be
        # known before dcmread, which would inflate a deflated body without any size bound.
        meta = read_dataset(fp, is_implicit_VR=False, is_little_endian=True, stop_when=lambda t, *_: t.group != 2)
        syntax = str(meta.get("TransferSyntaxUID", "") or "")
    except Exception as e:
        logger.debug("DICOM file meta unreadable (%s)", type(e).__name__)
        raise ImageDecodeError("DICOM file meta information is corrupt or truncated") from None
    if not syntax:
        raise ImageDecodeError("DICOM file meta information is truncated or has no transfer syntax")
    if syntax not in _NATIVE and syntax not in (_JPEG_BASELINE, _RLE):
        uid = UID(syntax)
        name = uid.name if uid.is_transfer_syntax else "an unknown transfer syntax"
        why = " (refused: inflating it has no size bound)" if syntax == _DEFLATED else ""
        raise ImageDecodeError(
            f"DICOM transfer syntax {name}{why} is not supported; use one of {', '.join(_SUPPORTED_SYNTAXES)}",
            code="unsupported_image",
        )
    fp.seek(0)
    try:
        return dcmread(fp, specific_tags=_TAGS)
    except Exception as e:
        # pydicom's message may quote values: log only its type, answer generically.
        logger.debug("DICOM dataset unreadable (%s)", type(e).__name__)
        raise ImageDecodeError("DICOM file is corrupt or truncated") from None


def _check_header(ds: Dataset, max_pixels: int, max_frames: int | None = None) -> tuple[int, int, int, str]:
    """Validate the Image Pixel module before touching pixel data; returns rows, columns, frames, PI."""
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise ImageDecodeError("DICOM float pixel data is not supported", code="unsupported_image")
        raise ImageDecodeError("DICOM file has no pixel data (or is truncated before it)")
    rows, cols = int_element(ds, "Rows"), int_element(ds, "Columns")
    frames = int_element(ds, "NumberOfFrames", 1)
    if rows <= 0 or cols <= 0 or frames <= 0:
        raise ImageDecodeError(f"DICOM image has an empty size ({cols}x{rows}, {frames} frames)")
    # The frame count first: a 10,000-frame file is "too many B-scans", whatever their size.
    if max_frames is not None and frames > max_frames:
        raise ImageDecodeError(
            f"DICOM file has {frames} frames, over the limit of {max_frames}", code="too_many_frames"
        )
    total = rows * cols * frames
    if total > max_pixels:
        raise ImageDecodeError(
            f"DICOM image is {cols}x{rows} x {frames} frame(s) = {total} pixels, over the limit of {max_pixels}",
            code="image_too_large",
        )
    try:
        photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    except Exception:
        photometric = ""
    samples = int_element(ds, "SamplesPerPixel", 1)
    allocated = int_element(ds, "BitsAllocated")
    stored = int_element(ds, "BitsStored", allocated)
    if photometric not in (*MONO, *COLOUR, PALETTE):
        shown = photometric if photometric in _KNOWN_PHOTOMETRIC else "an unknown value"
        raise ImageDecodeError(
            f"DICOM photometric interpretation {shown} is not supported "
            "(MONOCHROME1/2, RGB, YBR_FULL, YBR_FULL_422, PALETTE COLOR are)",
            code="unsupported_image",
        )
    if samples != (3 if photometric in COLOUR else 1):
        raise ImageDecodeError(f"DICOM {photometric} image with {samples} samples per pixel is inconsistent")
    if allocated not in (1, 8, 16, 32) or not 0 < stored <= allocated:
        raise ImageDecodeError(
            f"DICOM bit depth (allocated {allocated}, stored {stored}) is not supported", code="unsupported_image"
        )
    return rows, cols, frames, photometric


# Functional-group macros (PS3.3 C.7.6.16) whose attributes stand in for the top-level ones.
_FRAME_GROUPS = {
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept", "RescaleType"),
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction"),
}


def _frame_view(ds: Dataset, index: int) -> Dataset:
    """``ds`` as a single-frame dataset for frame ``index``: its functional groups' rescale and window on top.

    Per-frame values win over shared ones, which win over top-level ones (PS3.3 C.7.6.16.1). The
    result has no pixel data; it feeds the same modality/VOI code as a single frame.
    """
    from pydicom.dataset import Dataset as _Dataset

    shared = ds.get("SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not shared and not per_frame:
        return ds
    view = _Dataset()
    for elem in ds:
        if elem.keyword not in ("PixelData", "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
            view.add(elem)
    view.file_meta = ds.file_meta
    items = [shared[0] if shared else None, per_frame[index] if per_frame and index < len(per_frame) else None]
    try:
        for item in items:
            if item is None:
                continue
            for group, keywords in _FRAME_GROUPS.items():
                macro = item.get(group)
                if not macro:
                    continue
                for kw in keywords:
                    if kw in macro[0]:
                        setattr(view, kw, macro[0][kw].value)
    except Exception:
        raise ImageDecodeError("DICOM functional groups are corrupt") from None
    return view


def _decode_frame(
    ds: Dataset, rows: int, cols: int, photometric: str, index: int = 0, n_frames: int = 1
) -> tuple[np.ndarray, str]:
    """Frame ``index`` as ``(rows, cols)`` or ``(rows, cols, 3)``, YBR already converted to RGB."""
    from pydicom.pixels import get_decoder

    syntax = ds.file_meta.TransferSyntaxUID
    if syntax in (_JPEG_BASELINE, _RLE):
        _check_encapsulated_frame(ds, syntax, rows, cols, index, n_frames)
    try:
        # raw=False: pydicom converts YBR_FULL(_422) to RGB itself and reports the result's
        # photometric interpretation, so nothing here converts colours a second time.
        arr, meta = get_decoder(syntax).as_array(ds, index=index, raw=False)
    except ImageDecodeError:
        raise
    except MemoryError:
        raise ImageDecodeError("DICOM pixel data is too large to decode", code="image_too_large") from None
    except Exception as e:
        logger.debug("DICOM pixel data undecodable (%s)", type(e).__name__)
        raise ImageDecodeError("DICOM pixel data is corrupt or truncated") from None
    out_pi = str(meta.get("photometric_interpretation", photometric))
    expected = (rows, cols) if photometric in MONO or photometric == PALETTE else (rows, cols, 3)
    if arr.shape != expected:
        raise ImageDecodeError("DICOM pixel data does not match its header")
    return arr, out_pi


def _check_encapsulated_frame(
    ds: Dataset, syntax: str, rows: int, cols: int, index: int = 0, n_frames: int = 1
) -> None:
    """Bound the decoded size of a compressed frame by the header's, before decoding it.

    A JPEG frame carries its own width/height, and RLE runs expand up to 128x: neither is
    limited by ``Rows``/``Columns``, so a small file could still decode to gigabytes.
    """
    from pydicom.encaps import get_frame

    try:
        frame = get_frame(ds.PixelData, index, number_of_frames=n_frames)
    except Exception as e:
        logger.debug("DICOM encapsulated pixel data unreadable (%s)", type(e).__name__)
        raise ImageDecodeError("DICOM compressed pixel data is corrupt or truncated") from None
    if syntax == _JPEG_BASELINE:
        try:
            with Image.open(io.BytesIO(frame), formats=["JPEG"]) as jpeg:
                size = jpeg.size
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageDecodeError("DICOM JPEG frame is a decompression bomb", code="image_too_large") from None
        except Exception:
            raise ImageDecodeError("DICOM JPEG frame is corrupt or truncated") from None
        if size != (cols, rows):
            raise ImageDecodeError(
                f"DICOM JPEG frame is {size[0]}x{size[1]} but the header says {cols}x{rows}",
            )
        return
    # RLE: header = segment count + 15 offsets (PS3.5 G.3.1); each segment is one byte plane.
    if len(frame) < 64:
        raise ImageDecodeError("DICOM RLE frame is truncated")
    count, *offsets = struct.unpack("<16L", frame[:64])
    if not 1 <= count <= 15:
        raise ImageDecodeError("DICOM RLE frame header is corrupt")
    bounds = [*offsets[:count], len(frame)]
    # A row of slack: some encoders emit a pad byte per segment.
    limit = rows * cols + max(cols, 64)
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        if not 64 <= start <= end <= len(frame):
            raise ImageDecodeError("DICOM RLE frame header is corrupt")
        if _rle_decoded_length(frame[start:end], limit) > limit:
            raise ImageDecodeError("DICOM RLE segment expands beyond the image size in its header")


def _rle_decoded_length(segment: bytes, limit: int) -> int:
    """Bytes a PackBits segment decodes to, counting stops as soon as ``limit`` is passed."""
    n, pos, size = 0, 0, len(segment)
    while pos < size and n <= limit:
        header = segment[pos]
        if header < 128:  # literal run of header + 1 bytes
            n += header + 1
            pos += header + 2
        elif header > 128:  # next byte repeated 257 - header times
            n += 257 - header
            pos += 2
        else:  # 128 is a no-op
            pos += 1
    return n
