"""retina.dicom_guard: a DICOM of many items is refused before pydicom parses it; real files pass."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from retina import dicom
from retina.dicom import open_frames
from retina.dicom_guard import HeaderBudget, check_budget
from retina.errors import ImageDecodeError
from tests.dicom_helpers import make_dicom

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def _with_private_items(data: bytes, n_items: int) -> bytes:
    """``data`` with a private sequence (0009,1001) of ``n_items`` empty undefined-length items before group 0010.

    The issue's probe: 200,000 such items (3.2 MB) cost pydicom ~5 s of CPU and ~150 MB before any check.
    """
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    seq = struct.pack("<HH", 0x0009, 0x0010) + b"LO" + struct.pack("<H", 6) + b"PROBE "
    seq += struct.pack("<HH", 0x0009, 0x1001) + b"SQ\0\0" + struct.pack("<I", 0xFFFFFFFF) + item * n_items
    seq += struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    pos = 132
    while True:  # past the file meta and group 0008 (explicit VR little endian)
        group = struct.unpack_from("<H", data, pos)[0]
        if group > 0x0009:
            break
        vr = data[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR"):
            pos += 12 + struct.unpack_from("<I", data, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", data, pos + 6)[0]
    return data[:pos] + seq + data[pos:]


@pytest.fixture
def small() -> bytes:
    return make_dicom(np.zeros((64, 64), np.uint8))


def test_the_probe_is_refused_before_pydicom_parses_it(small: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    probe = _with_private_items(small, 200_000)
    assert len(probe) > 3_000_000

    def never(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("pydicom was asked to parse the probe")

    monkeypatch.setattr(dicom, "_read_dataset", never)
    with pytest.raises(ImageDecodeError) as caught:
        open_frames(probe)
    assert caught.value.code == "dicom_header_too_large"


def test_a_few_private_items_still_decode(small: bytes) -> None:
    data = _with_private_items(small, 10)
    assert check_budget(data).complete
    assert open_frames(data).frame(0).size == (64, 64)


def test_the_byte_budget_counts_too(small: bytes) -> None:
    with pytest.raises(ImageDecodeError) as caught:
        check_budget(small, HeaderBudget(max_bytes=100, max_elements=10**6))
    assert caught.value.code == "dicom_header_too_large"


def test_native_pixels_are_not_counted() -> None:
    big = make_dicom(np.zeros((1024, 1024), np.uint8))
    seen = check_budget(big, HeaderBudget(max_bytes=100_000))
    assert seen.complete and seen.bytes < 10_000


@pytest.mark.parametrize("path", sorted(SAMPLES.rglob("*.dcm")), ids=lambda p: p.name)
def test_shipped_samples_fit_the_budget(path: Path) -> None:
    seen = check_budget(path.read_bytes())
    assert seen.complete and seen.elements < 1000


@pytest.mark.parametrize("syntax", ["ImplicitVRLittleEndian", "ExplicitVRBigEndian", "RLELossless"])
def test_other_transfer_syntaxes_walk_to_the_end(syntax: str) -> None:
    from pydicom import uid

    data = make_dicom(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 251, transfer_syntax=getattr(uid, syntax))
    seen = check_budget(data)
    assert seen.complete and 10 < seen.elements < 200
