"""Untrusted bytes -> a fully loaded PIL image in ``L`` or ``RGB`` mode, the same for training and serving.

DICOM goes to ``retina.dicom`` (its own pixel pipeline); everything else to PIL, with EXIF
orientation, 16-bit, palette, alpha and CMYK handled by :func:`to_standard_mode`.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps

from retina.dicom import DEFAULT_MAX_PIXELS, decode_dicom, is_dicom
from retina.errors import ImageDecodeError

__all__ = ["DEFAULT_MAX_PIXELS", "ImageDecodeError", "decode_image", "load_image", "to_standard_mode"]

# Truncated files must fail loudly (422 at the API), never decode half an image silently.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode untrusted bytes to a fully loaded PIL image in ``L`` or ``RGB`` mode.

    Handles EXIF orientation, 16-bit, palette, alpha, CMYK and multi-frame files the same
    way for training and serving; DICOM files go to :func:`retina.dicom.decode_dicom`.
    Raises :class:`ImageDecodeError` for empty, truncated, unknown-format or oversized
    (decompression bomb) input; never returns half an image.
    """
    if not data:
        raise ImageDecodeError("the file is empty", code="empty_file")
    if is_dicom(data):
        # DICOM has its own pixel pipeline (photometric interpretation, windowing); its
        # 128-byte preamble may even carry another format's magic, so it is tested first.
        return decode_dicom(data, max_pixels)
    try:
        with warnings.catch_warnings():
            # PIL warns (rather than raises) between max_pixels and 2*max_pixels.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise ImageDecodeError(
                    f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}",
                    code="image_too_large",
                )
            img.load()
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(f"decompression bomb refused: {e}", code="image_too_large") from e
    except Image.UnidentifiedImageError as e:
        raise ImageDecodeError("not a recognised image format", code="unsupported_image") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageDecodeError(f"image could not be decoded: {e}") from e
    return to_standard_mode(img)


def load_image(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read an image file with exactly the decoding that serving applies to uploads."""
    with open(path, "rb") as f:
        return decode_image(f.read(), max_pixels=max_pixels)


def to_standard_mode(img: Image.Image) -> Image.Image:
    """Any PIL mode -> ``L`` (single channel sources) or ``RGB``, EXIF-upright.

    * 16/32-bit integer and float images are rescaled by their own min/max range to 8 bit
      (PIL's own ``convert`` clips 16-bit data, which whitens most OCT exports).
    * Alpha is composited on black, the background of both modalities.
    * CMYK, YCbCr, palette and LAB go through PIL's colour conversion to RGB.
    """
    img = ImageOps.exif_transpose(img)
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.min(arr)), float(np.max(arr))
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    if mode == "1":
        return img.convert("L")
    if mode == "L":
        return img
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("LA", "La", "RGBA", "RGBa", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
        return img
    if mode != "RGB":
        img = img.convert("RGB")
    return img
