"""How many bytes decoding an upload will take, read from its header before any pixel is decoded.

A pixel limit alone does not bound memory: a 39 MP RGBA PNG of 0.17 MB took ~890 MB to decode
(PIL keeps RGB and RGBA at 4 bytes per pixel, ``exif_transpose`` copied it, and compositing the
alpha on black made three more full copies). :func:`estimate` reads the header (PIL's lazy
``Image.open``, or the DICOM elements ``retina.dicom_guard`` walks) and multiplies

    pixels x bytes per pixel of the decoded mode x the working copies ``retina.decode`` makes

with the copies as they are after ``retina.decode`` was made to convert in strips (measured with
``benchmarks/load_benchmark.py``'s decode table). The service refuses an upload whose estimate is
over ``RETINA_MAX_DECODE_MB`` (422 ``image_too_large``) and reserves the estimate in its admission
budget while the image is being decoded.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image

from retina.dicom import is_dicom
from retina.dicom_guard import DEFAULT_BUDGET, HeaderBudget, check_budget
from retina.errors import ImageDecodeError

# PIL's storage per pixel: 1, L, P, I;16 keep 1-2 bytes; every 3- or 4-band mode (and LA, I, F) 4.
_STORED = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
# Full-size copies beyond the decoded image, per source mode, after ``retina.decode.to_standard_mode``:
# alpha and palette modes convert in strips into one RGB output (4 bytes per pixel); 16-bit keeps a
# numpy copy (2) and its 8-bit result (1 + 1); CMYK/YCbCr/LAB one RGB copy. A final L/RGB image
# of 1 or 4 bytes per pixel feeds the gate and prepare, which work on reduced copies.
_EXTRA = {"RGBA": 4, "RGBa": 4, "LA": 4, "La": 4, "PA": 4, "P": 8, "1": 1, "CMYK": 4, "YCbCr": 4, "LAB": 4, "HSV": 4}
_EXTRA_16 = 4
# The DICOM pipeline (retina.dicom): the stored array, then float64 modality / VOI / scaling steps for
# anything but 8-bit (a few full float64 copies), and the 8-bit PIL image.
_DICOM_PER_SAMPLE_8BIT = 2
_DICOM_PER_PIXEL_WIDE = 34
_DICOM_PER_PIXEL_COLOUR = 12
# Slack for the gate's and prepare's working images and the allocator's fragmentation.
_SLACK = 1


@dataclass(frozen=True)
class DecodeEstimate:
    """An upload's size as its header tells it: ``frames`` of ``width x height`` in ``mode``; ``bytes``
    is the most memory decoding *one* frame takes (frames are decoded one at a time)."""

    width: int
    height: int
    mode: str
    frames: int
    bytes: int

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def describe(self) -> str:
        frames = f" x {self.frames} frames" if self.frames > 1 else ""
        return f"{self.width}x{self.height} {self.mode}{frames}"


def bytes_per_pixel(mode: str, rotated: bool = False) -> int:
    """Peak bytes per pixel while ``retina.decode`` turns a ``mode`` image into ``L``/``RGB``."""
    stored = _STORED.get(mode, 4)
    extra = _EXTRA_16 if stored == 2 else _EXTRA.get(mode, 0)
    if mode in ("I", "F"):
        extra = _EXTRA_16 + 4
    # exif_transpose makes one copy of the decoded image when the orientation tag asks for a turn.
    return stored + extra + (stored if rotated else 0) + _SLACK


def estimate(data: bytes, budget: HeaderBudget = DEFAULT_BUDGET) -> DecodeEstimate:
    """Header -> :class:`DecodeEstimate`, without decoding pixels; ``ImageDecodeError`` when unreadable.

    DICOM files are walked by ``retina.dicom_guard`` first (refused over its budget);
    other formats are opened lazily by PIL, which reads only the header.
    """
    if is_dicom(data):
        return _dicom_estimate(data, budget)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                mode = img.mode
                rotated = img.getexif().get(0x0112, 1) not in (1, None)
                if mode == "P" and "transparency" not in img.info:
                    mode = "P"  # palette without alpha: one RGB copy, as counted for P
    except Image.DecompressionBombError:
        raise ImageDecodeError("decompression bomb refused", code="image_too_large") from None
    except Image.UnidentifiedImageError:
        raise ImageDecodeError("not a recognised image format", code="unsupported_image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageDecodeError(f"image header could not be read: {e}") from None
    return DecodeEstimate(width, height, mode, 1, width * height * bytes_per_pixel(mode, rotated))


def _dicom_estimate(data: bytes, budget: HeaderBudget) -> DecodeEstimate:
    seen = check_budget(data, budget)
    image = seen.image
    if image is None:
        # No usable Rows/Columns where the walk looked: the reader will say what is wrong; a nominal
        # cost keeps the admission honest meanwhile.
        return DecodeEstimate(0, 0, "DICOM", 1, len(data))
    rows, cols, samples, bits, frames = image
    if samples >= 3:
        per_pixel = _DICOM_PER_PIXEL_COLOUR
    elif bits <= 8:
        per_pixel = _DICOM_PER_SAMPLE_8BIT
    else:
        per_pixel = _DICOM_PER_PIXEL_WIDE
    mode = f"DICOM {samples}x{bits}-bit"
    return DecodeEstimate(cols, rows, mode, frames, rows * cols * (per_pixel + _SLACK))


def check_decode_budget(est: DecodeEstimate, max_bytes: int) -> None:
    """``ImageDecodeError`` ``image_too_large`` when decoding ``est`` would take more than ``max_bytes``."""
    if est.bytes > max_bytes:
        raise ImageDecodeError(
            f"decoding this {est.describe()} image would take about {est.bytes / 1e6:.0f} MB of memory "
            f"(pixels x bytes per pixel x working copies), over the limit of {max_bytes / 1e6:g} MB "
            "(RETINA_MAX_DECODE_MB); send a smaller or 8-bit image without alpha",
            code="image_too_large",
        )
