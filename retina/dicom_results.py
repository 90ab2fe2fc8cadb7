"""Results as DICOM: a Structured Report (TID 1500) of the findings and the PDF report as Encapsulated PDF.

What a PACS expects back from an AI service (IHE AI Results; MONAI Deploy writes the same pair):

* :func:`structured_report`: a Comprehensive 3D SR built with ``highdicom``'s TID 1500 Measurement
  Report. One measurement group per finding (an image, an eye, the patient), each with the
  model as Algorithm Identification, the label and the referral level as coded qualitative
  evaluations, every class probability as a measurement (UCUM ``1``), the eye as finding-site
  laterality, and the source image (when it was DICOM). The advice and the disclaimer
  (``retina.referral.DISCLAIMER``) are text items of the root container (TID 1500 has no slot for them; the SR
  stays readable by any SR viewer). ``VerificationFlag`` is ``UNVERIFIED``: no clinician signed it.
  The model's name and version are also in the Contributing Equipment Sequence.
* :func:`encapsulated_pdf`: SOP class Encapsulated PDF Storage (1.2.840.10008.5.1.4.1.1.104.1).

Identity: when the input was DICOM the result copies the source's Patient and Study modules (a
fixed list of elements, :data:`PATIENT_STUDY`) and references the source instances, so it lands in
the same study. Non-DICOM input gets a new study (no patient identity at all). Result UIDs are
derived from the source UIDs (or the file's SHA-256), the model ids and versions and the object
kind (:func:`result_uid`), so scoring the same study again writes the same instances: a PACS
stores them once.

Privacy: the identifiers copied here go into the result objects only; nothing in this module logs them.
"""

from __future__ import annotations

import hashlib
import io
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian

from retina.referral import DISCLAIMER, DISCLAIMER_SHORT

# highdicom logs the source datasets' SOP Instance UIDs at INFO while it copies the Patient and
# Study modules: identifiers of the input, which this service never logs. Its warnings still pass.
logging.getLogger("highdicom").setLevel(logging.WARNING)

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
MANUFACTURER = "RetinaScope"
# Titles and descriptions are LO (64 characters): they carry the disclaimer's short form.
REPORT_TITLE = f"RetinaScope AI report ({DISCLAIMER_SHORT.lower()})"
EXAM_REPORT_TITLE = f"RetinaScope exam report ({DISCLAIMER_SHORT.lower()})"
SERIES_DESCRIPTION = f"RetinaScope AI result ({DISCLAIMER_SHORT.lower()})"
SCHEME = "99RETINA"  # private coding scheme of this service's labels and levels (no standard codes exist)
# The elements of the Patient and Study modules copied from a DICOM input into every result object.
PATIENT_STUDY: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "OtherPatientIDsSequence",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
)
_SOURCE_TAGS = [*PATIENT_STUDY, "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "SpecificCharacterSet"]
_LATERALITY = {"right": Code("24028007", "SCT", "Right"), "left": Code("7771000", "SCT", "Left")}
_EYE = Code("81745001", "SCT", "Eye")
_PROCESSING = Code("109102", "DCM", "Processing Equipment")


@dataclass(frozen=True)
class ModelId:
    """A model that contributed: its id (the service's model name) and checkpoint version."""

    name: str
    version: str


@dataclass(frozen=True)
class Finding:
    """One answer to report: an image's, an eye's or the patient's.

    Attributes:
        name: what it is about, e.g. ``image 0``, ``right eye``, ``patient``.
        model: the model that answered (None for the patient's, which combines eyes).
        eye: ``right`` / ``left`` when the finding is of one eye.
        label: the class label; None when ungradable.
        probabilities: class -> calibrated probability in [0, 1]; None when ungradable.
        level, advice: the referral level and its advice sentence (as the API answers them).
        sources: SOP Instance UIDs of the DICOM inputs behind it (must be among the ``sources`` datasets).
    """

    name: str
    model: ModelId | None
    eye: str | None
    label: str | None
    probabilities: dict[str, float] | None
    level: str
    advice: str
    sources: tuple[str, ...] = field(default_factory=tuple)


def source_header(data: bytes) -> Dataset | None:
    """A DICOM file's Patient/Study/SOP identity (pixel data never read); None when not readable DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=_SOURCE_TAGS)
    except (InvalidDicomError, ValueError, OSError, EOFError, KeyError, TypeError):
        return None
    if "SOPInstanceUID" not in ds or "StudyInstanceUID" not in ds:
        return None
    for elem in list(ds):
        if elem.VR == "PN":  # person names are single-valued here; highdicom refuses several
            elem.value = _single_value(elem)
    _fill_type2(ds)
    return ds


def _fill_type2(ds: Dataset) -> None:
    """Type 2 Patient/Study elements (present, may be empty) that a source lacked, added empty: highdicom reads them."""
    for kw in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
        "StudyID",
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
    ):
        if kw not in ds:
            setattr(ds, kw, None)


def result_uid(kind: str, keys: Sequence[str], models: Sequence[ModelId]) -> str:
    """A UID (2.25 root) derived from the object kind, the source keys and the models: same inputs, same UID."""
    parts = [kind, *sorted(keys), *sorted(f"{m.name}@{m.version}" for m in models)]
    # 2.25.<UUID as an integer> (PS3.5 B.2), the UUID a name-based (version 5 style) hash of the parts.
    # pydicom's generate_uid(prefix=None) would ignore the entropy sources and be random.
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return f"2.25.{uuid.UUID(bytes=digest[:16], version=5).int}"


def _single_value(elem: DataElement) -> Any:
    """An element's value with at most one value: real files put backslashes (the DICOM value separator) in
    single-valued elements such as PatientName, which pydicom then reads as several values and highdicom
    refuses; the first value is kept (None when there is none)."""
    value = elem.value
    if isinstance(value, MultiValue):
        return value[0] if len(value) else None
    return value


def _identity(sources: Sequence[Dataset], fallback_key: str, models: Sequence[ModelId]) -> Dataset:
    """The Patient/Study elements of the first source, or of a new study (non-DICOM input), all present."""
    ident = Dataset()
    if sources:
        first = sources[0]
        for kw in PATIENT_STUDY:
            if kw in first:
                setattr(ident, kw, _single_value(first[kw]))
        if "SpecificCharacterSet" in first:
            ident.SpecificCharacterSet = first.SpecificCharacterSet
    else:
        ident.StudyInstanceUID = result_uid("study", [fallback_key], models)
        now = datetime.now(UTC)
        ident.StudyDate, ident.StudyTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    _fill_type2(ident)
    return ident


def _keys(sources: Sequence[Dataset], fallback_key: str) -> list[str]:
    return [str(s.SOPInstanceUID) for s in sources] or [fallback_key]


def _code(value: str, meaning: str) -> Code:
    # Code values are at most 16 characters (SH); meanings carry the full text.
    return Code(value[:16], SCHEME, meaning[:64])


def _group(finding: Finding, index: int, by_uid: dict[str, Dataset], uid: str) -> object:
    import highdicom as hd

    evaluate = hd.sr.QualitativeEvaluation
    evaluations = [evaluate(_code("referral", "Referral level"), _code(finding.level, finding.level))]
    if finding.label is not None:
        evaluations.append(evaluate(_code("finding", "Finding"), _code(finding.label, finding.label)))
    measurements = [
        hd.sr.Measurement(
            name=_code(f"p{i}", f"Probability of {name}"),
            value=round(float(p), 6),
            unit=Code("1", "UCUM", "no units"),
        )
        for i, (name, p) in enumerate((finding.probabilities or {}).items())
    ]
    sites = [hd.sr.FindingSite(_EYE, laterality=_LATERALITY[finding.eye])] if finding.eye in _LATERALITY else None
    referenced = [by_uid[u] for u in finding.sources]
    sources = [hd.sr.SourceImageForMeasurementGroup(d.SOPClassUID, d.SOPInstanceUID) for d in referenced]
    algorithm = hd.sr.AlgorithmIdentification(finding.model.name, finding.model.version) if finding.model else None
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=f"{finding.name} (#{index})"),
        algorithm_id=algorithm,
        finding_sites=sites,
        measurements=measurements or None,
        qualitative_evaluations=evaluations,
        source_images=sources or None,
    )


def _equipment(models: Sequence[ModelId]) -> list[object]:
    import highdicom as hd

    return [
        hd.ContributingEquipment(
            MANUFACTURER,
            _PROCESSING,
            manufacturer_model_name=m.name,
            software_versions=m.version,
            contribution_description=f"AI model {m.name} version {m.version} ({DISCLAIMER_SHORT.lower()})",
        )
        for m in models
    ]


def structured_report(
    findings: Sequence[Finding],
    sources: Sequence[Dataset],
    models: Sequence[ModelId],
    *,
    fallback_key: str,
    summary: str,
    kind: str = "sr",
) -> Dataset:
    """A TID 1500 Comprehensive 3D SR of ``findings`` (see the module docstring).

    ``sources``: headers (:func:`source_header`) of the DICOM inputs, one study; empty for
    non-DICOM input, which then gets a new study keyed by ``fallback_key`` (e.g. the files' SHA-256).
    ``summary``: one sentence (the patient's or the image's advice) written as a text item.
    ``kind``: part of the result UIDs (``sr`` for one image, ``exam-sr`` for an exam), so different
    answers about the same sources never share a SOP Instance UID.
    """
    import highdicom as hd

    keys = _keys(sources, fallback_key)
    by_uid = {str(s.SOPInstanceUID): s for s in sources}
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=result_uid("device", [], models),
        name=", ".join(m.name for m in models)[:64] or MANUFACTURER,
        manufacturer_name=MANUFACTURER,
        model_name=", ".join(f"{m.name} {m.version}" for m in models)[:64] or None,
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(hd.sr.CodedConcept("121007", "DCM", "Device"), device)
    )
    groups = [_group(f, i, by_uid, result_uid(f"finding-{i}", keys, models)) for i, f in enumerate(findings)]
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=_code("retina-screen", "Retinal image screening (AI)"),
        imaging_measurements=groups,
    )
    root = report[0]
    comment = hd.sr.CodedConcept("121106", "DCM", "Comment")
    for text in (summary, DISCLAIMER):
        root.ContentSequence.append(hd.sr.TextContentItem(comment, text[:1024], relationship_type="CONTAINS"))
    ident = _identity(sources, fallback_key, models)
    evidence = list(sources) or [_stub_evidence(ident, fallback_key, models)]
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=result_uid(f"{kind}-series", keys, models),
        series_number=990,
        sop_instance_uid=result_uid(kind, keys, models),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        contributing_equipment=_equipment(models),
        series_description=SERIES_DESCRIPTION,
    )
    if not sources:  # the stub is no real instance: reference nothing
        for kw in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
            if kw in sr:
                delattr(sr, kw)
    return sr


def _stub_evidence(ident: Dataset, fallback_key: str, models: Sequence[ModelId]) -> Dataset:
    """highdicom takes patient and study from an evidence dataset: for non-DICOM input, this new-study stub."""
    stub = Dataset()
    stub.update(ident)
    stub.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture: what the upload would have been
    stub.SOPInstanceUID = result_uid("stub", [fallback_key], models)
    stub.SeriesInstanceUID = result_uid("stub-series", [fallback_key], models)
    return stub


def encapsulated_pdf(
    pdf: bytes,
    sources: Sequence[Dataset],
    models: Sequence[ModelId],
    *,
    fallback_key: str,
    title: str = REPORT_TITLE,
    kind: str = "pdf",
) -> Dataset:
    """``pdf`` as an Encapsulated PDF instance in the sources' study (or a new one), UIDs as :func:`result_uid`."""
    keys = _keys(sources, fallback_key)
    ident = _identity(sources, fallback_key, models)
    now = datetime.now(UTC)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ENCAPSULATED_PDF
    meta.MediaStorageSOPInstanceUID = result_uid(kind, keys, models)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.update(ident)
    ds.SOPClassUID = ENCAPSULATED_PDF
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = result_uid(f"{kind}-series", keys, models)
    ds.Modality = "DOC"
    ds.SeriesNumber = 991
    ds.InstanceNumber = 1
    ds.Manufacturer = MANUFACTURER
    ds.ConversionType = "WSD"  # Workstation: made by software, not scanned
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES"  # the page prints what the SR holds
    ds.DocumentTitle = title[:64]
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")  # even length, as DICOM requires
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.SeriesDescription = SERIES_DESCRIPTION
    ds.ContributingEquipmentSequence = [_equipment_item(m) for m in models]
    if sources:
        ds.SourceInstanceSequence = [_reference(s) for s in sources]
    return ds


def _equipment_item(m: ModelId) -> Dataset:
    item = Dataset()
    item.Manufacturer = MANUFACTURER
    item.ManufacturerModelName = m.name
    item.SoftwareVersions = m.version
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "109102", "DCM", "Processing Equipment"
    item.PurposeOfReferenceCodeSequence = [code]
    return item


def _reference(source: Dataset) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return ref


def to_bytes(ds: Dataset) -> bytes:
    """A result dataset as DICOM Part 10 bytes (explicit VR little endian)."""
    buf = io.BytesIO()
    if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
        meta = getattr(ds, "file_meta", None) or FileMetaDataset()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
