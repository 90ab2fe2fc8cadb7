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
from retina.memory import check_decode_budget, estimate

__all__ = ["DEFAULT_MAX_PIXELS", "ImageDecodeError", "decode_image", "load_image", "to_standard_mode"]

# Truncated files must fail loudly (422 at the API), never decode half an image silently.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int | None = None) -> Image.Image:
    """Decode untrusted bytes to a fully loaded PIL image in ``L`` or ``RGB`` mode.

    Handles EXIF orientation, 16-bit, palette, alpha, CMYK and multi-frame files the same
    way for training and serving; DICOM files go to :func:`retina.dicom.decode_dicom`.
    Raises :class:`ImageDecodeError` for empty, truncated, unknown-format or oversized
    (decompression bomb, or over ``max_bytes`` of decode memory by :mod:`retina.memory`'s
    estimate) input; never returns half an image.
    """
    if not data:
        raise ImageDecodeError("the file is empty", code="empty_file")
    if max_bytes is not None:
        # From the header alone, before any pixel is decoded (DICOM: before pydicom parses it).
        check_decode_budget(estimate(data), max_bytes)
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
    if img.getexif().get(0x0112, 1) not in (1, None):
        # Only when the tag asks for a turn: exif_transpose copies the whole image even when it does not.
        img = ImageOps.exif_transpose(img)
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _wide_to_l(img)
    if mode == "1":
        return img.convert("L")
    if mode == "L":
        return img
    if mode == "P":
        if "transparency" not in img.info:
            return img.convert("RGB")
        img = img.convert("RGBA")
        mode = img.mode
    if mode in ("LA", "La", "RGBA", "RGBa", "PA"):
        return _composite_on_black(img)
    if mode != "RGB":
        img = img.convert("RGB")
    return img


# Rows converted at a time: full-size float64 or RGBA working copies of a 40 MP image are 300+ MB
# each; a strip of 256 rows of one is a few MB. Every step is per pixel, so strips change no value.
_STRIP_ROWS = 256


def _wide_to_l(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float -> ``L``, min-max rescaled (PIL's own convert clips 16-bit data).

    Same arithmetic as a whole-image float64 ``(x - lo) / (hi - lo) * 255`` rounded half to even,
    done in row strips so only one strip is ever float64.
    """
    arr = np.asarray(img)
    lo, hi = float(np.min(arr)), float(np.max(arr))
    out = np.zeros(arr.shape, dtype=np.uint8)
    if hi > lo:
        for top in range(0, arr.shape[0], _STRIP_ROWS):
            strip = arr[top : top + _STRIP_ROWS].astype(np.float64)
            out[top : top + _STRIP_ROWS] = np.round((strip - lo) / (hi - lo) * 255.0).astype(np.uint8)
    return Image.fromarray(out, mode="L")


def _composite_on_black(img: Image.Image) -> Image.Image:
    """Any alpha mode -> ``RGB`` composited on opaque black (the background of both modalities), in strips."""
    width, height = img.size
    out = Image.new("RGB", (width, height))
    for top in range(0, height, _STRIP_ROWS):
        box = (0, top, width, min(height, top + _STRIP_ROWS))
        rgba = img.crop(box).convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        out.paste(Image.alpha_composite(background, rgba).convert("RGB"), box)
    return out
