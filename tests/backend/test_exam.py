"""POST /predict/exam, /report/exam and the DICOM result formats (SR, Encapsulated PDF) on the real samples."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageFilter

from retina.dicom_results import ENCAPSULATED_PDF
from retina.paths import REPO_ROOT
from retina.referral import ADVICE, DISCLAIMER, HEADLINES
from tests.dicom_helpers import OPHTHALMIC_PHOTOGRAPHY_8BIT, leaked, make_dicom

FUNDUS = REPO_ROOT / "samples/fundus"
RIGHT = [FUNDUS / "IDRiD_079-grade1.jpeg", FUNDUS / "IDRiD_003-grade2.jpeg"]
LEFT = [FUNDUS / "IDRiD_138-grade0.jpeg", FUNDUS / "IDRiD_005-grade4.jpeg"]


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def blurred() -> bytes:
    """A sample fundus photo blurred until the gate finds it ungradable (still a fundus photo)."""
    img = Image.open(LEFT[0]).convert("RGB")
    img.thumbnail((1024, 1024))
    return _jpeg(img.filter(ImageFilter.GaussianBlur(25)))


@pytest.fixture(scope="module")
def fundus_dcm() -> bytes:
    """An Ophthalmic Photography DICOM of a real sample (left eye), with fake identifiers."""
    img = Image.open(RIGHT[1]).convert("RGB")
    img.thumbnail((1024, 1024))
    return make_dicom(np.asarray(img), sop_class=OPHTHALMIC_PHOTOGRAPHY_8BIT, ImageLaterality="L")


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level("DEBUG")
    yield caplog


def _files(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]


def _exam(client: TestClient, files: list, laterality: list[str] | None = None, **params: str) -> httpx.Response:
    data = {"laterality": laterality} if laterality else None
    return client.post("/predict/exam", params={"model": "fundus", **params}, files=files, data=data)


def test_exam_without_a_laterality_is_422_missing_laterality(client: TestClient) -> None:
    r = _exam(client, _files(RIGHT[:1] + LEFT[:1]))  # IDRiD names say no eye
    assert r.status_code == 422 and r.json()["error"] == "missing_laterality"
    assert "file 0" in r.json()["detail"] and "file 1" in r.json()["detail"]
    r = _exam(client, _files(RIGHT[:1]), ["sideways"])
    assert r.status_code == 422 and r.json()["error"] == "missing_laterality"


def test_exam_of_both_eyes_answers_per_eye_and_per_patient(client: TestClient) -> None:
    r = _exam(client, _files(RIGHT + LEFT), ["right", "OD", "left", "OS"])
    assert r.status_code == 200, r.text
    body = r.json()
    right, left = body["eyes"]
    assert (right["eye"], left["eye"]) == ("right", "left")
    assert right["images"] == [0, 1] and left["images"] == [2, 3]
    assert right["n_gradable"] == 2 and left["n_gradable"] == 2
    for eye in (right, left):
        decided = body["images"][eye["deciding_image"]]["result"]
        assert eye["referral"]["level"] == decided["referral"]["level"] and eye["label"] == decided["label"]
    urgency = {"urgent": 3, "refer": 2, "rescreen_12_months": 1}
    worst = max((right, left), key=lambda e: urgency[e["referral"]["level"]])
    assert body["patient"]["level"] == worst["referral"]["level"]
    assert [i["laterality_source"] for i in body["images"]] == ["form"] * 4


def test_an_eye_without_a_gradable_image_is_ungradable(client: TestClient, blurred: bytes) -> None:
    files = [*_files(RIGHT[:1]), ("files", ("photo_left.jpg", blurred, "image/jpeg"))]
    r = _exam(client, files)  # eyes from the names: IDRiD_079 has none, so say it by form for file 0 only
    assert r.status_code == 422
    r = _exam(client, files, ["right"])  # file 1's eye comes from its name
    assert r.status_code == 200, r.text
    body = r.json()
    left = body["eyes"][1]
    assert body["images"][1]["laterality_source"] == "filename"
    assert left["referral"]["level"] == "ungradable" and left["referral"]["advice"] == ADVICE["ungradable_eye"]
    # Every block carries the words of its level, written by retina.referral (the UI and the PDF print them).
    for block in (body["patient"], *(e["referral"] for e in body["eyes"])):
        assert block["headline"] == HEADLINES[block["level"]]
    assert left["deciding_image"] is None and left["n_gradable"] == 0
    if body["eyes"][0]["referral"]["level"] == "rescreen_12_months":
        assert body["patient"]["level"] == "ungradable"


def test_exam_audits_one_row_per_image_and_one_for_the_exam(client: TestClient) -> None:
    r = _exam(client, _files(RIGHT[:1] + LEFT[:1]), ["right", "left"])
    assert r.status_code == 200
    rid = r.headers["x-request-id"]
    entries, _ = client.app.state.audit.page(None, None, 1000, None)  # type: ignore[attr-defined]
    mine = [e for e in entries if (e["request_id"] if isinstance(e, dict) else e.request_id) == rid]
    endpoints = sorted(e["endpoint"] if isinstance(e, dict) else e.endpoint for e in mine)
    assert endpoints == ["exam", "predict_exam", "predict_exam"]


def test_exam_as_sr_and_its_pdf_report(client: TestClient, fundus_dcm: bytes, logs: pytest.LogCaptureFixture) -> None:
    files = [("files", ("a.dcm", fundus_dcm, "application/dicom")), *_files(RIGHT[:1])]
    r = _exam(client, files, ["", "right"], format="dicom-sr")  # file 0: the DICOM header says left
    assert r.status_code == 200, r.text
    sr = pydicom.dcmread(io.BytesIO(r.content))
    src = pydicom.dcmread(io.BytesIO(fundus_dcm))
    assert sr.VerificationFlag == "UNVERIFIED" and sr.StudyInstanceUID == src.StudyInstanceUID
    assert sr.PatientID == src.PatientID
    assert not leaked(logs.text) and src.SOPInstanceUID not in logs.text and src.StudyInstanceUID not in logs.text
    r = client.post("/report/exam", params={"model": "fundus"}, files=files, data={"laterality": ["", "right"]})
    assert r.status_code == 200 and r.content.startswith(b"%PDF")
    r = client.post(
        "/report/exam", params={"model": "fundus", "format": "dicom"}, files=files, data={"laterality": ["", "R"]}
    )
    doc = pydicom.dcmread(io.BytesIO(r.content))
    assert doc.SOPClassUID == ENCAPSULATED_PDF and doc.StudyInstanceUID == src.StudyInstanceUID
    assert doc.EncapsulatedDocument.startswith(b"%PDF")


def test_predict_as_sr_names_the_model_and_is_unverified(client: TestClient, fundus_dcm: bytes) -> None:
    r = client.post("/predict", params={"model": "fundus", "format": "dicom-sr"}, files={"file": ("a.dcm", fundus_dcm)})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom"
    sr = pydicom.dcmread(io.BytesIO(r.content))
    answer = client.post("/predict", params={"model": "fundus"}, files={"file": ("a.dcm", fundus_dcm)}).json()
    equipment = sr.ContributingEquipmentSequence[0]
    assert (equipment.ManufacturerModelName, equipment.SoftwareVersions) == (answer["model"], answer["model_version"])
    assert sr.VerificationFlag == "UNVERIFIED"
    src = pydicom.dcmread(io.BytesIO(fundus_dcm))
    assert sr.StudyInstanceUID == src.StudyInstanceUID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert evidence.ReferencedSOPInstanceUID == src.SOPInstanceUID
    text = r.content.decode("latin-1")
    assert DISCLAIMER in text and answer["referral"]["advice"] in text
    # Deterministic: the same input and model give the same SR instance.
    again = client.post(
        "/predict", params={"model": "fundus", "format": "dicom-sr"}, files={"file": ("a.dcm", fundus_dcm)}
    )
    assert pydicom.dcmread(io.BytesIO(again.content)).SOPInstanceUID == sr.SOPInstanceUID


def test_report_as_encapsulated_pdf_keeps_the_dicom_study(client: TestClient, fundus_dcm: bytes) -> None:
    r = client.post("/report", params={"model": "fundus", "format": "dicom"}, files={"file": ("a.dcm", fundus_dcm)})
    assert r.status_code == 200, r.text
    doc = pydicom.dcmread(io.BytesIO(r.content))
    src = pydicom.dcmread(io.BytesIO(fundus_dcm))
    assert doc.SOPClassUID == ENCAPSULATED_PDF and doc.Modality == "DOC"
    assert doc.StudyInstanceUID == src.StudyInstanceUID and doc.PatientName == src.PatientName
    assert doc.EncapsulatedDocument.startswith(b"%PDF")
    # A JPEG gets a new study and no patient identity.
    jpeg = {"file": (RIGHT[0].name, RIGHT[0].read_bytes())}
    r = client.post("/report", params={"model": "fundus", "format": "dicom"}, files=jpeg)
    doc = pydicom.dcmread(io.BytesIO(r.content))
    assert doc.StudyInstanceUID != src.StudyInstanceUID and not doc.PatientName


def test_an_oct_volume_is_part_of_an_exam_and_answers_as_sr(client: TestClient) -> None:
    volume = (REPO_ROOT / "samples/oct/DRUSEN-1237848-volume.dcm").read_bytes()
    files = [*_files(RIGHT[:1]), ("files", ("vol.dcm", volume, "application/dicom"))]
    r = client.post("/predict/exam", params={"model": "auto"}, files=files, data={"laterality": ["right", "left"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [i["kind"] for i in body["images"]] == ["image", "volume"]
    assert body["images"][1]["result"]["task"] == "oct" and body["images"][1]["volume"]["n_frames"] > 1
    assert body["eyes"][1]["images"] == [1]
    r = client.post("/predict/volume", params={"model": "oct", "format": "dicom-sr"}, files={"file": ("v.dcm", volume)})
    assert r.status_code == 200, r.text
    sr = pydicom.dcmread(io.BytesIO(r.content))
    src = pydicom.dcmread(io.BytesIO(volume), stop_before_pixels=True)
    assert sr.VerificationFlag == "UNVERIFIED" and sr.StudyInstanceUID == src.StudyInstanceUID


def test_a_backslash_in_the_patient_name_is_an_sr_not_a_500(client: TestClient) -> None:
    """Real files put the DICOM value separator in PatientName; the SR keeps the first value."""
    img = Image.open(RIGHT[1]).convert("RGB")
    img.thumbnail((512, 512))
    dcm = make_dicom(
        np.asarray(img), sop_class=OPHTHALMIC_PHOTOGRAPHY_8BIT, ImageLaterality="L", PatientName="DOE^JANE\\DOE^J"
    )
    for route, params in [("/predict", {"format": "dicom-sr"}), ("/report", {"format": "dicom"})]:
        r = client.post(route, params={"model": "fundus", **params}, files={"file": ("a.dcm", dcm)})
        assert r.status_code == 200, (route, r.text)
        assert str(pydicom.dcmread(io.BytesIO(r.content)).PatientName) == "DOE^JANE"
    r = _exam(client, [("files", ("a.dcm", dcm, "application/dicom"))], format="dicom-sr")
    assert r.status_code == 200, r.text
