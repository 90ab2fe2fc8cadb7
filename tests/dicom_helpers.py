"""Build DICOM files in memory with pydicom, carrying fake patient identifiers that must never leak."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from pydicom.config import disable_value_validation
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
OPHTHALMIC_PHOTOGRAPHY_8BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.1"

# Written into every test file; none of these strings may appear in an error, response or log.
PATIENT: dict[str, str] = {
    "PatientName": "DOE^JANE",
    "PatientID": "PID-12345",
    "PatientBirthDate": "19700101",
    "OtherPatientIDs": "OTHER-67890",
    "AccessionNumber": "ACC-98765",
    "InstitutionName": "St Example Eye Hospital",
    "ReferringPhysicianName": "SMITH^JOHN",
    "StudyDescription": "Retina follow-up of Jane Doe",
}
IDENTIFIERS: tuple[str, ...] = (
    "DOE^JANE",
    "Jane Doe",
    "PID-12345",
    "19700101",
    "OTHER-67890",
    "ACC-98765",
    "St Example Eye Hospital",
    "SMITH^JOHN",
)


def leaked(text: str | bytes) -> list[str]:
    """The identifiers (from :data:`IDENTIFIERS`) found in ``text``."""
    hay = text.decode("latin-1") if isinstance(text, bytes) else text
    return [s for s in IDENTIFIERS if s in hay]


def make_dicom(
    pixels: np.ndarray,
    *,
    photometric: str | None = None,
    sop_class: str = SECONDARY_CAPTURE,
    transfer_syntax: str = ExplicitVRLittleEndian,
    encoded: bytes | None = None,
    bits_stored: int | None = None,
    preamble: bool = True,
    **elements: Any,
) -> bytes:
    """A DICOM Part 10 file holding ``pixels`` (``(H, W)`` grey or ``(H, W, 3)``) as one frame.

    ``pixels`` is stored natively (uint8 or uint16) unless ``encoded`` is given: then it is
    only the source of Rows/Columns/samples, and ``encoded`` (one compressed frame, e.g. a
    JPEG codestream) is encapsulated. ``elements`` set or override any dataset keyword
    (``RescaleSlope=...``, ``NumberOfFrames=...``); :data:`PATIENT` is always included.
    """
    if pixels.ndim not in (2, 3):
        raise ValueError("pixels must be (H, W) or (H, W, 3)")
    # Tests write deliberately invalid values (an identifier as Photometric Interpretation):
    # without this pydicom would warn about them here, muddling the tests' log checks.
    with disable_value_validation():
        return _make(pixels, photometric, sop_class, transfer_syntax, encoded, bits_stored, preamble, elements)


def _make(
    pixels: np.ndarray,
    photometric: str | None,
    sop_class: str,
    transfer_syntax: str,
    encoded: bytes | None,
    bits_stored: int | None,
    preamble: bool,
    elements: dict[str, Any],
) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OP" if sop_class == OPHTHALMIC_PHOTOGRAPHY_8BIT else "OT"
    for k, v in PATIENT.items():
        setattr(ds, k, v)

    colour = pixels.ndim == 3
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric or ("RGB" if colour else "MONOCHROME2")
    if colour:
        ds.PlanarConfiguration = 0
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated = bits
    ds.BitsStored = bits_stored or bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if encoded is not None:
        ds.PixelData = encapsulate([encoded])
        ds["PixelData"].VR = "OB"
        if transfer_syntax == JPEGBaseline8Bit:
            ds.LossyImageCompression = "01"
    elif transfer_syntax == RLELossless:
        # pydicom's own RLE encoder (pure Python/numpy, always available).
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        ds.compress(RLELossless, encoding_plugin="pydicom")
    else:
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    for k, v in elements.items():
        if v is None:
            if k in ds:
                delattr(ds, k)
        else:
            setattr(ds, k, v)
    return save(ds, preamble=preamble)


def save(ds: Dataset, *, preamble: bool = True) -> bytes:
    """``ds`` as Part 10 bytes (with the 128-byte preamble and ``DICM`` unless ``preamble=False``)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    return data if preamble else data[132:]


def make_volume(frames: list[np.ndarray], kind: str = "opt", **elements: Any) -> bytes:
    """A multi-frame DICOM (``"opt"`` Ophthalmic Tomography or ``"sc"`` multi-frame Secondary Capture) of
    ``frames`` via ``training.data.volumes.volume_dicom``, carrying :data:`PATIENT`'s identifiers."""
    from training.data.volumes import volume_dicom

    with disable_value_validation():
        return volume_dicom(frames, kind, **(PATIENT | elements))  # type: ignore[arg-type]
