"""DICOM decoding (``retina.dicom``) on files built with pydicom from the real OCT and fundus sample images.

Every file carries fake patient identifiers (``tests.dicom_helpers.PATIENT``); no error message,
log record or warning may contain them.
"""

from __future__ import annotations

import io
import logging
import struct
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import convert_color_space
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

from retina.dicom import decode_dicom, is_dicom
from retina.preprocessing import ImageDecodeError, decode_image
from tests.dicom_helpers import OPHTHALMIC_PHOTOGRAPHY_8BIT, PATIENT, leaked, make_dicom

# ----------------------------------------------------------------------------- real images


@pytest.fixture(scope="module")
def oct_jpeg(oct_image: Path) -> bytes:
    """A real OCT2017 B-scan from the samples (grayscale JPEG, 8 bit)."""
    return oct_image.read_bytes()


@pytest.fixture(scope="module")
def oct_grey(oct_jpeg: bytes) -> np.ndarray:
    """``uint8 (H, W)``: the B-scan's pixels."""
    img = Image.open(io.BytesIO(oct_jpeg))
    assert img.mode == "L"
    return np.asarray(img)


@pytest.fixture(scope="module")
def fundus_jpeg(fundus_image: Path) -> bytes:
    """A real IDRiD colour fundus photo from the samples (YCbCr JFIF JPEG)."""
    return fundus_image.read_bytes()


@pytest.fixture(scope="module")
def fundus_rgb(fundus_jpeg: bytes) -> np.ndarray:
    """``uint8 (H, W, 3)``: the photo as Pillow decodes it."""
    return np.asarray(Image.open(io.BytesIO(fundus_jpeg)).convert("RGB"))


def _refused(data: bytes, code: str, *, max_pixels: int = 50_000_000) -> str:
    """Decode must raise ``code``; returns the detail after checking it names no patient."""
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, max_pixels=max_pixels)
    assert info.value.code == code, info.value.detail
    assert leaked(info.value.detail) == []
    assert leaked(str(info.value)) == []
    return info.value.detail


# ----------------------------------------------------------------------------- detection


def test_is_dicom_needs_dicm_and_file_meta(oct_grey: np.ndarray, oct_jpeg: bytes) -> None:
    data = make_dicom(oct_grey)
    assert is_dicom(data)
    assert not is_dicom(oct_jpeg)
    assert not is_dicom(b"")
    # "DICM" at 128 is not enough: a conformant file continues with group 0002.
    assert not is_dicom(b"\x89PNG\r\n\x1a\n" + b"\x00" * 120 + b"DICMxxxx")
    # The preamble may hold anything, even another format's magic.
    assert is_dicom(b"II*\x00" + data[4:])


def test_file_without_preamble_is_decoded(oct_grey: np.ndarray) -> None:
    data = make_dicom(oct_grey, preamble=False)
    assert data[:4] == b"\x02\x00\x00\x00"  # starts with (0002,0000)
    assert is_dicom(data)
    np.testing.assert_array_equal(np.asarray(decode_image(data)), oct_grey)


# ----------------------------------------------------------------------------- pixel pipeline


def test_secondary_capture_monochrome2_8bit_is_exact(oct_grey: np.ndarray) -> None:
    img = decode_image(make_dicom(oct_grey))
    assert img.mode == "L" and img.size == (oct_grey.shape[1], oct_grey.shape[0])
    np.testing.assert_array_equal(np.asarray(img), oct_grey)


def test_16bit_rescale_and_window_match_the_standard_formula(oct_grey: np.ndarray) -> None:
    stored = oct_grey.astype(np.uint16) * 200 + 100  # 100 .. 51100
    slope, intercept, center, width = 0.5, -1000.0, 11550.0, 15000.0
    data = make_dicom(stored, RescaleSlope=slope, RescaleIntercept=intercept, WindowCenter=center, WindowWidth=width)
    got = np.asarray(decode_image(data)).astype(np.float64)
    # PS3.3 C.11.2.1.2.1 (LINEAR) on the modality values, written out independently.
    hu = stored * slope + intercept
    want = np.clip((hu - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0) * 255.0
    assert np.abs(got - want).max() <= 1.0
    assert got.min() == 0 and got.max() == 255  # the window clips both ends of this scan


def test_16bit_without_window_is_min_max_scaled(oct_grey: np.ndarray) -> None:
    stored = oct_grey.astype(np.uint16) * 200 + 100
    got = np.asarray(decode_image(make_dicom(stored, bits_stored=16))).astype(np.float64)
    lo, hi = float(oct_grey.min()), float(oct_grey.max())
    want = (oct_grey - lo) / (hi - lo) * 255.0
    assert np.abs(got - want).max() <= 0.5 + 1e-9


def test_voi_lut_sequence_is_applied(oct_grey: np.ndarray) -> None:
    lut = np.round(255.0 * (np.arange(256) / 255.0) ** 0.5).astype(np.uint16)  # a gamma curve
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.LUTData = lut.tolist()
    item["LUTData"].VR = "US"
    got = np.asarray(decode_image(make_dicom(oct_grey, VOILUTSequence=[item])))
    np.testing.assert_array_equal(got, lut[oct_grey])


def test_monochrome1_is_inverted_back(oct_grey: np.ndarray) -> None:
    data = make_dicom((255 - oct_grey).astype(np.uint8), photometric="MONOCHROME1")
    np.testing.assert_array_equal(np.asarray(decode_image(data)), oct_grey)


@pytest.mark.parametrize("planar", [0, 1])
def test_ophthalmic_photography_rgb_is_pixel_exact(fundus_rgb: np.ndarray, planar: int) -> None:
    stored = fundus_rgb if planar == 0 else fundus_rgb.transpose(2, 0, 1)  # RRR..GGG..BBB.. planes
    data = make_dicom(
        np.ascontiguousarray(stored).reshape(fundus_rgb.shape),
        sop_class=OPHTHALMIC_PHOTOGRAPHY_8BIT,
        PlanarConfiguration=planar,
    )
    img = decode_image(data)
    assert img.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img), fundus_rgb)


def test_ybr_full_is_converted_to_rgb_once(fundus_rgb: np.ndarray) -> None:
    ybr = convert_color_space(fundus_rgb, "RGB", "YBR_FULL")
    got = np.asarray(decode_image(make_dicom(ybr, photometric="YBR_FULL", sop_class=OPHTHALMIC_PHOTOGRAPHY_8BIT)))
    # One YCbCr round trip rounds by at most a level or two; a second conversion would shift hues.
    assert np.abs(got.astype(int) - fundus_rgb).max() <= 2


def test_jpeg_baseline_colour_matches_pillow(fundus_jpeg: bytes, fundus_rgb: np.ndarray) -> None:
    data = make_dicom(
        fundus_rgb,
        photometric="YBR_FULL_422",
        sop_class=OPHTHALMIC_PHOTOGRAPHY_8BIT,
        transfer_syntax=JPEGBaseline8Bit,
        encoded=fundus_jpeg,
    )
    got = np.asarray(decode_image(data)).astype(int)
    assert got.shape == fundus_rgb.shape
    assert np.abs(got - fundus_rgb).max() <= 3
    assert np.abs(got - fundus_rgb).mean() <= 0.5


def test_jpeg_baseline_grey_matches_pillow(oct_jpeg: bytes, oct_grey: np.ndarray) -> None:
    data = make_dicom(oct_grey, transfer_syntax=JPEGBaseline8Bit, encoded=oct_jpeg)
    np.testing.assert_array_equal(np.asarray(decode_image(data)), oct_grey)


def test_rle_lossless_grey_and_rgb_are_exact(oct_grey: np.ndarray, fundus_rgb: np.ndarray) -> None:
    np.testing.assert_array_equal(np.asarray(decode_image(make_dicom(oct_grey, transfer_syntax=RLELossless))), oct_grey)
    small = np.ascontiguousarray(fundus_rgb[::4, ::4])
    np.testing.assert_array_equal(np.asarray(decode_image(make_dicom(small, transfer_syntax=RLELossless))), small)


def test_palette_color_uses_the_lut(fundus_jpeg: bytes) -> None:
    pal_img = Image.open(io.BytesIO(fundus_jpeg)).convert("RGB").quantize(64)
    index = np.asarray(pal_img)
    palette = np.zeros((256, 3), dtype=np.uint16)
    entries = np.asarray(pal_img.getpalette(), dtype=np.uint16).reshape(-1, 3)[:256]
    palette[: len(entries)] = entries
    luts = {}
    for i, colour in enumerate(("Red", "Green", "Blue")):
        luts[f"{colour}PaletteColorLookupTableDescriptor"] = [256, 0, 16]
        luts[f"{colour}PaletteColorLookupTableData"] = (palette[:, i] * 257).astype("<u2").tobytes()
    img = decode_image(make_dicom(index, photometric="PALETTE COLOR", **luts))
    assert img.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img), np.asarray(pal_img.convert("RGB")))


# ----------------------------------------------------------------------------- refusals


def test_multi_frame_is_refused(oct_grey: np.ndarray) -> None:
    two = np.concatenate([oct_grey, oct_grey])
    detail = _refused(make_dicom(two, Rows=oct_grey.shape[0], NumberOfFrames=2), "invalid_image")
    assert "multi-frame" in detail and "single frame" in detail


def test_missing_pixel_data_is_refused(oct_grey: np.ndarray) -> None:
    assert "no pixel data" in _refused(make_dicom(oct_grey, PixelData=None), "invalid_image")


def test_huge_header_is_refused_before_any_allocation(oct_grey: np.ndarray) -> None:
    data = make_dicom(oct_grey, Rows=60000, Columns=60000)  # 3.6 Gpixel claimed, 380 kB sent
    tracemalloc.start()
    try:
        detail = _refused(data, "image_too_large")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "60000x60000" in detail
    assert peak < 20 * len(data)  # a few copies of the file at most, never the claimed image


def test_pixel_limit_counts_the_header_size(oct_grey: np.ndarray) -> None:
    h, w = oct_grey.shape
    _refused(make_dicom(oct_grey), "image_too_large", max_pixels=h * w - 1)
    assert decode_image(make_dicom(oct_grey), max_pixels=h * w).size == (w, h)


def test_jpeg_frame_larger_than_its_header_is_refused(oct_jpeg: bytes, oct_grey: np.ndarray) -> None:
    # The header claims a 64x64 image but the JPEG inside is the full scan: never decoded.
    data = make_dicom(oct_grey[:64, :64], transfer_syntax=JPEGBaseline8Bit, encoded=oct_jpeg)
    assert "header says 64x64" in _refused(data, "invalid_image")


def test_rle_bomb_is_refused_before_expansion(oct_grey: np.ndarray) -> None:
    # One segment of 20k runs of 128 bytes each: 2.5 MB for a header that allows 4 kB.
    frame = struct.pack("<16L", 1, 64, *([0] * 14)) + b"\x81\x00" * 20_000
    data = make_dicom(oct_grey[:64, :64], transfer_syntax=RLELossless, encoded=frame)
    assert "expands beyond" in _refused(data, "invalid_image")


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_truncated_file_is_invalid(oct_grey: np.ndarray, keep: float) -> None:
    data = make_dicom(oct_grey)
    _refused(data[: int(len(data) * keep)], "invalid_image")


@pytest.mark.parametrize("syntax", [RLELossless, JPEGBaseline8Bit])
def test_truncated_compressed_file_is_invalid(oct_jpeg: bytes, oct_grey: np.ndarray, syntax: str) -> None:
    encoded = oct_jpeg if syntax == JPEGBaseline8Bit else None
    data = make_dicom(oct_grey, transfer_syntax=syntax, encoded=encoded)
    _refused(data[: len(data) * 2 // 3], "invalid_image")


def test_truncated_inside_file_meta_is_invalid(oct_grey: np.ndarray) -> None:
    _refused(make_dicom(oct_grey)[:150], "invalid_image")


def test_deflated_syntax_is_refused_unread(oct_grey: np.ndarray) -> None:
    detail = _refused(make_dicom(oct_grey, transfer_syntax=DeflatedExplicitVRLittleEndian), "unsupported_image")
    assert "Deflated" in detail


def test_other_codecs_are_unsupported_with_a_clear_message(oct_grey: np.ndarray) -> None:
    data = make_dicom(oct_grey, transfer_syntax=JPEG2000Lossless, encoded=b"\xff\x4f\xff\x51" + b"\x00" * 64)
    detail = _refused(data, "unsupported_image")
    assert "JPEG 2000" in detail and "JPEG Baseline" in detail


def test_unsupported_photometric_is_not_echoed(oct_grey: np.ndarray) -> None:
    detail = _refused(make_dicom(oct_grey, photometric="DOE^JANE"), "unsupported_image")
    assert "unknown value" in detail


# ----------------------------------------------------------------------------- privacy


def _identifier_in_technical_fields(oct_grey: np.ndarray) -> bytes:
    """A file whose NumberOfFrames (IS) holds the patient's name: pydicom would quote it."""
    data = make_dicom(oct_grey, NumberOfFrames="12345678")
    assert data.count(b"12345678") == 1
    return data.replace(b"12345678", PATIENT["PatientName"].encode())


def test_invalid_values_are_neither_logged_nor_warned(oct_grey: np.ndarray, caplog: pytest.LogCaptureFixture) -> None:
    bad_frames = _identifier_in_technical_fields(oct_grey)
    bad_photometric = make_dicom(oct_grey, photometric="DOE^JANE")
    good = make_dicom(oct_grey, WindowCenter=128, WindowWidth=200)
    caplog.clear()  # pydicom's writer warned about the invalid values above: only decoding counts
    caplog.set_level(logging.DEBUG)
    for name in ("pydicom", "retina"):
        caplog.set_level(logging.DEBUG, logger=name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _refused(bad_frames, "invalid_image")
        _refused(bad_photometric, "unsupported_image")
        decode_image(good)
    assert leaked(caplog.text) == []
    assert [leaked(r.getMessage()) for r in caplog.records if leaked(r.getMessage())] == []
    assert [str(w.message) for w in caught if leaked(str(w.message))] == []


def test_pydicom_logging_outside_decoding_is_untouched(oct_grey: np.ndarray, caplog: pytest.LogCaptureFixture) -> None:
    """The silencing is scoped to decode_dicom: pydicom's own logging still works afterwards."""
    decode_dicom(make_dicom(oct_grey))
    caplog.set_level(logging.WARNING, logger="pydicom")
    logging.getLogger("pydicom").warning("outside decoding")
    assert "outside decoding" in caplog.text


def test_identifiers_are_in_the_test_files(oct_grey: np.ndarray) -> None:
    """Guards the privacy tests above: the files really carry the identifiers they look for."""
    data = make_dicom(oct_grey)
    assert set(leaked(data)) >= {"DOE^JANE", "PID-12345", "19700101", "ACC-98765"}
