"""scoring.pacs against a real Orthanc (tests/orthanc.py): a study's SR and PDF land in it, a rerun adds nothing."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from retina.dicom_results import ENCAPSULATED_PDF
from retina.paths import REPO_ROOT
from scoring.batch import BatchScorer, ScoreConfig
from scoring.dicomweb import DicomWebClient, multipart_body, multipart_parts
from scoring.pacs import is_image, main, process_study
from tests.dicom_helpers import OPHTHALMIC_PHOTOGRAPHY_8BIT, PATIENT, leaked, make_dicom
from tests.orthanc import orthanc_server, study_instance_count, upload

FUNDUS = REPO_ROOT / "samples/fundus"


@pytest.fixture(scope="module")
def orthanc() -> Iterator[str]:
    try:
        with orthanc_server() as url:
            yield url
    except FileNotFoundError as e:
        pytest.skip(f"{e}: scripts/test.sh installs Debian's orthanc and orthanc-dicomweb when run as root")


@pytest.fixture(scope="module")
def scorer() -> BatchScorer:
    """The shipped fundus model and gate, scored by torch (the fastest to load on a test box)."""
    return BatchScorer(ScoreConfig(model="fundus", engine="torch", torch_threads=1))


def _photo(name: str, study: str, series: str, laterality: str) -> bytes:
    img = Image.open(FUNDUS / name).convert("RGB")
    img.thumbnail((768, 768))
    return make_dicom(
        np.asarray(img),
        sop_class=OPHTHALMIC_PHOTOGRAPHY_8BIT,
        StudyInstanceUID=study,
        SeriesInstanceUID=series,
        ImageLaterality=laterality,
    )


def test_multipart_round_trip() -> None:
    body, ctype = multipart_body([b"one\r\n", b"two"])
    assert multipart_parts(ctype, body) == [b"one\r\n", b"two"]


def test_pacs_round_trip_adds_sr_and_pdf_once(
    orthanc: str, scorer: BatchScorer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    study, series = generate_uid(), generate_uid()
    for name, eye in (("IDRiD_079-grade1.jpeg", "R"), ("IDRiD_138-grade0.jpeg", "L")):
        upload(orthanc, _photo(name, study, series, eye))
    assert study_instance_count(orthanc, study) == 2
    client = DicomWebClient(f"{orthanc}/dicom-web", timeout=30)

    first = process_study(client, scorer, study)
    assert (first.instances, first.scored, first.without_eye) == (2, 2, 0)
    assert first.stored == ["sr", "pdf"] and first.already_present == []
    assert study_instance_count(orthanc, study) == 4

    refs = client.study_instances(study)
    results = {r.modality: r for r in refs if not is_image(r)}
    assert set(results) == {"SR", "DOC"}
    sr = pydicom.dcmread(io.BytesIO(client.retrieve(results["SR"])))
    assert sr.VerificationFlag == "UNVERIFIED" and sr.StudyInstanceUID == study
    assert sr.PatientID == PATIENT["PatientID"]
    equipment = sr.ContributingEquipmentSequence[0]
    meta = scorer.models["fundus-resnet18"].meta if "fundus-resnet18" in scorer.models else None
    assert equipment.ManufacturerModelName in scorer.models
    if meta is not None:
        assert equipment.SoftwareVersions == meta.version
    doc = pydicom.dcmread(io.BytesIO(client.retrieve(results["DOC"])))
    assert doc.SOPClassUID == ENCAPSULATED_PDF and doc.EncapsulatedDocument.startswith(b"%PDF")

    # Again, through the command line: the same UIDs, already there, nothing sent.
    monkeypatch.setenv("RETINA_ENGINE", "torch")
    assert main(["--url", f"{orthanc}/dicom-web", "--study", study, "--model", "fundus", "--timeout", "30"]) == 0
    assert study_instance_count(orthanc, study) == 4
    assert "stored nothing; already present sr, pdf" in caplog.text
    second = process_study(client, scorer, study)
    assert second.stored == [] and second.already_present == ["sr", "pdf"]
    assert study_instance_count(orthanc, study) == 4
    assert not leaked(caplog.text) and study not in caplog.text
    assert not any(r.sop_instance in caplog.text for r in refs)  # highdicom logs them at INFO unless told not to
