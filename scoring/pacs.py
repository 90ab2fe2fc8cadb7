"""Score a PACS study over DICOMweb and store the results back into it (SR + Encapsulated PDF).

    python -m scoring.pacs --url DICOMWEB_ROOT --study STUDY_UID [--model auto|fundus|oct]
        [--header "Authorization: Bearer TOKEN"] [--timeout 30] [--models-dir models/]
    python -m scoring.pacs --url DICOMWEB_ROOT --watch [--interval 10] [--since 20260101]

For a study: QIDO-RS lists its instances; every image or volume (not SRs, PDFs, presentation
states ...) is fetched by WADO-RS and scored **in-process with the service's own pipeline**
(``scoring.batch.BatchScorer``, which loads the served models and gate as ``python -m scoring``
does, and ``scoring.exam_scoring``), as one exam: each instance's eye from its DICOM laterality
(instances without one are left out and counted). The exam's TID 1500 SR and its PDF report as
Encapsulated PDF (``retina.exam_dicom``; the PDF is the API's ``/report/exam`` page) are stored
with STOW-RS into the same study. Their UIDs derive from the source instances' UIDs and the models'
versions, and an instance already in the study is not sent again: rerunning adds nothing.

In-process rather than through the HTTP API: no image leaves the machine twice, the tool runs
where the PACS is reachable without a backend deployed, and the answers equal the API's
(``scoring.batch`` is the same gate/model/referral code the API runs, tested for parity).

``--watch`` polls QIDO-RS ``/studies`` (works with any DICOMweb server, Orthanc included) and
scores a study once its instance count is unchanged between two polls (a study still arriving
is not scored half-way); a study is scored again only when its count changes beyond what was
stored. Study and patient identifiers are never logged: studies are numbered in the log.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from backend.app.services.exam_report import build_exam_report
from retina.dicom_results import source_header, to_bytes
from retina.exam import ExamAssessment
from retina.exam_dicom import exam_encapsulated_pdf, exam_structured_report
from retina.paths import DEFAULT_MODELS_DIR
from scoring.batch import AUTO, BatchScorer, ScoreConfig
from scoring.dicomweb import DicomWebClient, DicomWebError, InstanceRef, value
from scoring.exam_scoring import ExamFile, score_exam

log = logging.getLogger("scoring.pacs")

# SOP classes that are not images to score: SR documents, encapsulated documents, presentation
# states, key objects, segmentations/registrations, RT objects (this tool's own results among them).
_NOT_IMAGES = (
    "1.2.840.10008.5.1.4.1.1.88.",
    "1.2.840.10008.5.1.4.1.1.104.",
    "1.2.840.10008.5.1.4.1.1.11.",
    "1.2.840.10008.5.1.4.1.1.66",
    "1.2.840.10008.5.1.4.1.1.481.",
)
_NOT_IMAGE_MODALITIES = {"SR", "DOC", "KO", "PR", "SEG", "REG", "RTSTRUCT", "RTPLAN"}


@dataclass
class StudyOutcome:
    """What one run did to one study (counts only: no identifiers)."""

    instances: int = 0
    scored: int = 0
    without_eye: int = 0
    stored: list[str] = field(default_factory=list)
    already_present: list[str] = field(default_factory=list)
    patient_level: str | None = None


def is_image(ref: InstanceRef) -> bool:
    """Whether an instance is something to score (not a document, SR or presentation state)."""
    if ref.modality in _NOT_IMAGE_MODALITIES:
        return False
    return not (ref.sop_class and ref.sop_class.startswith(_NOT_IMAGES))


def _pdf(exam: ExamAssessment) -> bytes:
    # The API's exam page (one author for its words): scoring sits above the service and reuses it.
    return build_exam_report(exam, "pacs")


def process_study(client: DicomWebClient, scorer: BatchScorer, study: str) -> StudyOutcome:
    """Score ``study`` as one exam and store its SR and PDF into it (each only when not already there)."""
    out = StudyOutcome()
    refs = client.study_instances(study)
    out.instances = len(refs)
    present = {r.sop_instance for r in refs}
    images = [r for r in refs if is_image(r)]
    files = [ExamFile(i, None, client.retrieve(r)) for i, r in enumerate(images)]
    exam, missing = score_exam(scorer, files)
    out.without_eye = len(missing)
    if exam is None:
        log.warning("no instance of the study has a laterality (ImageLaterality/Laterality): nothing scored")
        return out
    out.scored = len(exam.items)
    out.patient_level = str(exam.patient["level"])
    sources: dict[int, Dataset] = {}
    for f in files:
        header = source_header(f.data)
        if header is not None and f.index not in missing:
            sources[f.index] = header
    key = "pacs:" + ",".join(sorted(h.SOPInstanceUID for h in sources.values()))
    results = {
        "sr": exam_structured_report(exam, sources, key),
        "pdf": exam_encapsulated_pdf(_pdf(exam), exam, sources, key),
    }
    to_send: list[bytes] = []
    for kind, ds in results.items():
        if str(ds.SOPInstanceUID) in present:
            out.already_present.append(kind)
        else:
            to_send.append(to_bytes(ds))
            out.stored.append(kind)
    if to_send:
        client.store(to_send, study)
    return out


def _studies(client: DicomWebClient, since: str | None) -> dict[str, int]:
    params = {"includefield": "00201208"}
    if since:
        params["StudyDate"] = f"{since}-"
    found = client.search("/studies", params)
    return {str(value(a, "0020000D")): int(value(a, "00201208") or 0) for a in found if value(a, "0020000D")}


def watch(
    client: DicomWebClient, scorer: BatchScorer, interval: float, since: str | None, rounds: int | None = None
) -> None:
    """Poll for studies; score each once stable (same instance count twice), again only if it grows."""
    last: dict[str, int] = {}
    done: dict[str, int] = {}
    numbers: dict[str, int] = {}
    n = 0
    while rounds is None or n < rounds:
        n += 1
        try:
            counts = _studies(client, since)
        except DicomWebError as e:
            log.warning("polling failed: %s", e)
            counts = {}
        for study, count in counts.items():
            number = numbers.setdefault(study, len(numbers) + 1)
            if done.get(study) == count or last.get(study) != count:
                last[study] = count
                continue
            try:
                outcome = process_study(client, scorer, study)
            except DicomWebError as e:
                log.warning("study #%d: %s", number, e)
                continue
            except Exception as e:  # noqa: BLE001 - one bad study must not stop a clinic's watcher
                # The type only: a DICOM library's message may quote the study's identifiers. The study is
                # marked done at its current count, so it is retried only when new instances arrive.
                log.warning("study #%d: not scored (%s)", number, type(e).__name__)
                done[study] = last[study] = count
                continue
            _log_outcome(number, outcome)
            done[study] = count + len(outcome.stored)
            last[study] = done[study]
        if rounds is None or n < rounds:
            time.sleep(interval)


def _log_outcome(number: int, o: StudyOutcome) -> None:
    log.info(
        "study #%d: %d instances, %d scored, %d without laterality, patient %s; stored %s; already present %s",
        number,
        o.instances,
        o.scored,
        o.without_eye,
        o.patient_level,
        ", ".join(o.stored) or "nothing",
        ", ".join(o.already_present) or "nothing",
    )


def _headers(values: Sequence[str]) -> dict[str, str]:
    headers = {}
    for h in values:
        name, sep, val = h.partition(":")
        if not sep or not name.strip():
            raise SystemExit(f"--header must be 'Name: value', got {h.split(':')[0][:30]!r}...")
        headers[name.strip()] = val.strip()
    return headers


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m scoring.pacs", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="DICOMweb root, e.g. http://orthanc:8042/dicom-web")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--study", help="StudyInstanceUID to score")
    what.add_argument("--watch", action="store_true", help="follow new studies (QIDO-RS polling)")
    p.add_argument("--model", default=AUTO, help="auto (default: by the image gate), fundus, oct or a model id")
    p.add_argument("--header", action="append", default=[], help="extra HTTP header, e.g. 'Authorization: Bearer X'")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per DICOMweb request")
    p.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    p.add_argument("--interval", type=float, default=10.0, help="--watch: seconds between polls")
    p.add_argument("--since", help="--watch: only studies from this StudyDate on (YYYYMMDD)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    client = DicomWebClient(args.url, _headers(args.header), args.timeout)
    scorer = BatchScorer(ScoreConfig(models_dir=args.models_dir, model=args.model))
    log.info("models: %s", scorer.describe())
    if args.watch:
        watch(client, scorer, args.interval, args.since)
        return 0
    try:
        outcome = process_study(client, scorer, args.study)
    except DicomWebError as e:
        log.error("%s", e)
        return 2
    _log_outcome(1, outcome)
    return 0 if outcome.scored else 1


if __name__ == "__main__":
    sys.exit(main())
