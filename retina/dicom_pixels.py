"""DICOM pixel values -> 8-bit display values (``L`` or ``RGB``), frame by frame.

``retina.dicom`` parses and checks the file and decodes a frame's stored values; this module
turns them into what a PNG of the same image would hold.

Pixel pipeline (DICOM PS3.3 C.7.6.3, C.11; all maths is pydicom's ``pydicom.pixels``):

* ``MONOCHROME1/2``: stored values -> modality LUT (``RescaleSlope/Intercept`` or a
  Modality LUT Sequence) -> VOI (VOI LUT Sequence, else ``WindowCenter/Width``) scaled from
  the VOI output range to 0-255. Without a VOI, 8-bit (or narrower) unsigned data with no
  modality transform keeps its values (as an 8-bit PNG would), anything else is min-max
  scaled like 16-bit PNG/TIFF in :func:`retina.preprocessing.to_standard_mode`.
  ``MONOCHROME1`` (0 = white) is inverted at the end.
* ``RGB``, ``YBR_FULL``, ``YBR_FULL_422``: pydicom's decoder already returns RGB for YBR
  (``raw=False``), including YCbCr JPEG frames, so colours are converted exactly once.
* ``PALETTE COLOR``: the palette LUT gives RGB.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from retina.errors import ImageDecodeError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

MONO = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422")
PALETTE = "PALETTE COLOR"


def int_element(ds: Dataset, keyword: str, default: int | None = None) -> int:
    """An integer element, or ``default``; a missing/garbled value is a generic error."""
    try:
        value = ds.get(keyword, None)
        if value is None or value == "":
            if default is None:
                raise ImageDecodeError(f"DICOM image lacks {keyword}")
            return default
        return int(value)
    except ImageDecodeError:
        raise
    except Exception:
        raise ImageDecodeError(f"DICOM element {keyword} has an invalid value") from None


def to_8bit(arr: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    """Decoded frame -> ``uint8`` ``(H, W)`` or ``(H, W, 3)`` display values."""
    from pydicom.pixels import apply_color_lut, convert_color_space

    if photometric in COLOUR:
        if photometric != "RGB":  # only if a decoder ever left YBR unconverted
            arr = convert_color_space(arr, photometric, "RGB")
        return _stored_range_to_8bit(arr, int_element(ds, "BitsStored", 8))
    if photometric == PALETTE:
        try:
            rgb = apply_color_lut(arr, ds)[..., :3]
        except Exception as e:
            logger.debug("DICOM palette unusable (%s)", type(e).__name__)
            raise ImageDecodeError("DICOM palette colour lookup table is missing or corrupt") from None
        return rgb if rgb.dtype == np.uint8 else np.round(rgb.astype(np.float64) / 257.0).astype(np.uint8)
    grey = _monochrome_to_8bit(arr, ds)
    return 255 - grey if photometric == "MONOCHROME1" else grey


def _stored_range_to_8bit(arr: np.ndarray, bits_stored: int) -> np.ndarray:
    """Unsigned stored values ``[0, 2**bits_stored - 1]`` -> ``uint8`` (identity for 8 bit)."""
    if bits_stored == 8 and arr.dtype == np.uint8:
        return arr
    top = float(2**bits_stored - 1)
    return np.round(np.clip(arr.astype(np.float64), 0, top) * (255.0 / top)).astype(np.uint8)


def _scale(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear map ``[lo, hi] -> [0, 255]`` with clipping; constant images become 0."""
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    out = (arr.astype(np.float64) - lo) * (255.0 / (hi - lo))
    return np.round(np.clip(out, 0.0, 255.0)).astype(np.uint8)


def _monochrome_to_8bit(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored grey values -> modality LUT -> VOI -> ``uint8``; min-max when no VOI applies."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, apply_windowing

    has_modality = bool(ds.get("ModalityLUTSequence")) or not (
        float_element(ds, "RescaleSlope", 1.0) == 1.0 and float_element(ds, "RescaleIntercept", 0.0) == 0.0
    )
    try:
        values = apply_modality_lut(arr, ds) if has_modality else arr
    except Exception as e:
        logger.debug("DICOM modality LUT unusable (%s)", type(e).__name__)
        raise ImageDecodeError("DICOM modality LUT (rescale) is invalid") from None

    voi = _voi_kind(ds)
    if voi is not None:
        try:
            shown = apply_voi_lut(values, ds, index=0, prefer_lut=True)
            if voi == "lut":
                # apply_voi returns LUT entries of the descriptor's nominal bit depth.
                depth = int(ds.VOILUTSequence[0].LUTDescriptor[2])
                lo, hi = 0.0, float(max(2**depth - 1, int(np.max(shown))))
            else:
                # Ask pydicom for its own output range [y_min, y_max] (it depends on the bit
                # depth, signedness and rescale): -inf/+inf land on the window's two ends.
                ends = apply_windowing(np.array([-np.inf, np.inf]), ds, index=0)
                lo, hi = sorted((float(ends[0]), float(ends[1])))
            return _scale(shown, lo, hi)
        except Exception as e:
            # Invalid window (width < 1, unknown VOI function, bad LUT): fall through to
            # min-max rather than refuse an image whose pixels are fine.
            logger.debug("DICOM VOI unusable, min-max scaling instead (%s)", type(e).__name__)

    bits = int_element(ds, "BitsStored", 8)
    if not has_modality and bits <= 8 and int_element(ds, "PixelRepresentation", 0) == 0:
        return _stored_range_to_8bit(values, bits)
    values = values.astype(np.float64)
    return _scale(values, float(values.min()), float(values.max()))


def float_element(ds: Dataset, keyword: str, default: float) -> float:
    try:
        value: Any = ds.get(keyword, None)
        return default if value is None or value == "" else float(value)
    except Exception:
        raise ImageDecodeError(f"DICOM element {keyword} has an invalid value") from None


def _voi_kind(ds: Dataset) -> str | None:
    """Which VOI transform ``apply_voi_lut(prefer_lut=True)`` will apply: lut, window or None."""
    try:
        seq = ds.get("VOILUTSequence")
        if seq and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None:
            return "lut"
        if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
            return "window"
    except Exception:
        logger.debug("DICOM VOI elements unreadable; min-max scaling instead")
    return None
