"""An exam's answer as DICOM results: the SR's findings (every image, each eye, the patient) and the PDF wrapper.

Shared by the API (``/predict/exam?format=dicom-sr``, ``/report/exam?format=dicom``) and the PACS
tool (``scoring.pacs``), so both write the same objects with the same deterministic UIDs.
``sources``: the DICOM inputs' headers by exam index (``retina.dicom_results.source_header``); the
results join the first DICOM input's study and reference its instances of that study.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydicom.dataset import Dataset

from retina.assessment import Assessment
from retina.dicom_results import EXAM_REPORT_TITLE, Finding, ModelId, encapsulated_pdf, structured_report
from retina.exam import EXAM_HEADLINE, ExamAssessment
from retina.referral import NO_POLICY

EXAM_SR = "exam-sr"
EXAM_PDF = "exam-pdf"


def finding(name: str, result: Assessment, eye: str | None, sources: Sequence[str] = ()) -> Finding:
    """One assessment (image, volume) as an SR finding."""
    ref = result.referral or NO_POLICY
    probs = dict(result.probabilities) if result.probabilities is not None else None
    model = ModelId(result.model, result.model_version)
    return Finding(name, model, eye, result.label, probs, str(ref["level"]), str(ref["advice"]), tuple(sources))


def exam_models(exam: ExamAssessment) -> list[ModelId]:
    """The distinct models that scored the exam's images, in upload order."""
    seen: dict[tuple[str, str], ModelId] = {}
    for item in exam.items:
        if item.assessment is not None:
            m = ModelId(item.assessment.model, item.assessment.model_version)
            seen.setdefault((m.name, m.version), m)
    return list(seen.values())


def study_sources(sources: Mapping[int, Dataset]) -> list[Dataset]:
    """The DICOM inputs of the first DICOM input's study, in exam order: a result belongs to one study."""
    headers = [sources[i] for i in sorted(sources)]
    if not headers:
        return []
    study = headers[0].StudyInstanceUID
    return [h for h in headers if h.StudyInstanceUID == study]


def exam_findings(exam: ExamAssessment, sources: Mapping[int, Dataset]) -> list[Finding]:
    """Every scored image (with its source reference), each eye (its deciding image's model), the patient."""
    known = {str(s.SOPInstanceUID) for s in study_sources(sources)}
    uid_of = {i: str(h.SOPInstanceUID) for i, h in sources.items() if str(h.SOPInstanceUID) in known}
    findings: list[Finding] = []
    for item in exam.items:
        if item.assessment is not None:
            refs = [uid_of[item.index]] if item.index in uid_of else []
            findings.append(finding(f"{item.kind} {item.index}", item.assessment, item.eye, refs))
    by_index = {i.index: i for i in exam.items}
    for eye in exam.eyes:
        ref = eye.referral
        deciding = by_index.get(eye.deciding) if eye.deciding is not None else None
        model = None
        if deciding is not None and deciding.assessment is not None:
            model = ModelId(deciding.assessment.model, deciding.assessment.model_version)
        probs = dict(eye.probabilities) if eye.probabilities is not None else None
        name = EXAM_HEADLINE[eye.eye]
        findings.append(Finding(name, model, eye.eye, eye.label, probs, str(ref["level"]), str(ref["advice"])))
    patient = exam.patient
    findings.append(Finding("patient", None, None, None, None, str(patient["level"]), str(patient["advice"])))
    return findings


def exam_structured_report(exam: ExamAssessment, sources: Mapping[int, Dataset], key: str) -> Dataset:
    """The exam's TID 1500 SR; ``key`` (the files' combined SHA-256) names a new study when no input was DICOM."""
    return structured_report(
        exam_findings(exam, sources),
        study_sources(sources),
        exam_models(exam),
        fallback_key=key,
        summary=str(exam.patient["advice"]),
        kind=EXAM_SR,
    )


def exam_encapsulated_pdf(pdf: bytes, exam: ExamAssessment, sources: Mapping[int, Dataset], key: str) -> Dataset:
    """The exam's PDF report as an Encapsulated PDF instance in the inputs' study."""
    return encapsulated_pdf(
        pdf,
        study_sources(sources),
        exam_models(exam),
        fallback_key=key,
        title=EXAM_REPORT_TITLE,
        kind=EXAM_PDF,
    )
