"""OCT volumes from single B-scans: group Kermany scans by patient and class, write them as multi-frame DICOM.

Kermany OCT2017 ships single B-scans named ``CLASS-PATIENT-N.jpeg``; several of them per patient
and class are B-scans of one eye's study. :func:`patient_volumes` groups a data table into those
studies, and :func:`volume_dicom` writes a stack of frames as the two multi-frame objects a clinic
exports (built with pydicom, the library that reads them in ``retina.dicom``):

* ``"opt"``: Ophthalmic Tomography Image Storage, an enhanced multi-frame IOD; the window of each
  frame is in its Per-frame Functional Groups (Frame VOI LUT), as Spectralis/Cirrus exports carry it;
* ``"sc"``: Multi-frame Grayscale Byte (8 bit) or Word (16 bit) Secondary Capture, one top-level window.

Used by ``training/evaluate/volumes.py``, ``scripts/make_samples.py`` and the tests.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

OPHTHALMIC_TOMOGRAPHY = "1.2.840.10008.5.1.4.1.1.77.1.5.4"
MF_GRAYSCALE_BYTE_SC = "1.2.840.10008.5.1.4.1.1.7.2"
MF_GRAYSCALE_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"

VolumeKind = Literal["opt", "sc"]


@dataclass(frozen=True)
class PatientVolume:
    """The B-scans of one patient and class, in file-name order (``CLASS-PATIENT-N``, N ascending)."""

    patient: str
    label: str
    paths: tuple[Path, ...]


def _scan_number(path: Path) -> int:
    tail = path.stem.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def patient_volumes(rows: Sequence[tuple[Path, str, str]], min_scans: int = 2) -> list[PatientVolume]:
    """``[(path, label, patient_id)]`` -> one volume per (patient, class) with at least ``min_scans`` B-scans.

    A patient with scans of two classes gives two volumes (the same patient: split by patient, not volume).
    """
    groups: dict[tuple[str, str], list[Path]] = {}
    for path, label, patient in rows:
        groups.setdefault((str(patient), str(label)), []).append(Path(path))
    out = [
        PatientVolume(p, lab, tuple(sorted(paths, key=lambda q: (_scan_number(q), q.name))))
        for (p, lab), paths in sorted(groups.items())
        if len(paths) >= min_scans
    ]
    return out


def common_frames(images: Sequence[Image.Image]) -> list[np.ndarray]:
    """Grey ``uint8 (H, W)`` frames of one size: the most common size among ``images`` (first on ties).

    One DICOM object has one Rows x Columns. Kermany B-scans of one patient are 512, 768 or 1024 px
    wide at 496 rows; the others are resized (bilinear) to the common size, as a viewer would show them.
    """
    sizes = [im.size for im in images]
    target = max(sizes, key=lambda s: (sizes.count(s), -sizes.index(s)))
    return [
        np.asarray((im if im.size == target else im.resize(target, Image.Resampling.BILINEAR)).convert("L"))
        for im in images
    ]


def volume_dicom(
    frames: Sequence[np.ndarray],
    kind: VolumeKind = "opt",
    *,
    windows: Sequence[tuple[float, float]] | None = None,
    **elements: Any,
) -> bytes:
    """A multi-frame DICOM Part 10 file of ``frames`` (each ``uint8`` or ``uint16 (H, W)``, one size).

    ``windows``: ``(center, width)`` per frame; for ``"opt"`` written per frame (Frame VOI LUT
    functional group), for ``"sc"`` only the first is written, at the top level. ``elements``
    set any further top-level keyword (a test's fake patient identifiers, ``NumberOfFrames=...``).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    if not frames:
        raise ValueError("a volume needs at least one frame")
    shape, dtype = frames[0].shape, frames[0].dtype
    if any(f.shape != shape or f.dtype != dtype for f in frames) or len(shape) != 2:
        raise ValueError("frames must be 2-D and share one shape and dtype")
    bits = 8 if dtype == np.uint8 else 16
    if kind == "opt":
        sop = OPHTHALMIC_TOMOGRAPHY
    else:
        sop = MF_GRAYSCALE_BYTE_SC if bits == 8 else MF_GRAYSCALE_WORD_SC

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OPT" if kind == "opt" else "OT"
    ds.Rows, ds.Columns = int(shape[0]), int(shape[1])
    ds.NumberOfFrames = len(frames)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if kind == "opt":
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.BurnedInAnnotation = "NO"
        shared = Dataset()
        pvt = Dataset()
        pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = 1, 0, "US"
        shared.PixelValueTransformationSequence = DicomSequence([pvt])
        ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
        items = []
        for i in range(len(frames)):
            item = Dataset()
            content = Dataset()
            content.InStackPositionNumber = i + 1
            item.FrameContentSequence = DicomSequence([content])
            if windows is not None:
                voi = Dataset()
                voi.WindowCenter, voi.WindowWidth = float(windows[i][0]), float(windows[i][1])
                item.FrameVOILUTSequence = DicomSequence([voi])
            items.append(item)
        ds.PerFrameFunctionalGroupsSequence = DicomSequence(items)
    elif windows is not None:
        ds.WindowCenter, ds.WindowWidth = float(windows[0][0]), float(windows[0][1])
    ds.PixelData = b"".join(np.ascontiguousarray(f).astype(f"<u{bits // 8}").tobytes() for f in frames)
    for k, v in elements.items():
        if v is None:
            if k in ds:
                delattr(ds, k)
        else:
            setattr(ds, k, v)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
