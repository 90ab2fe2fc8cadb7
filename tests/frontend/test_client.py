"""frontend.client against a scripted HTTP server: requests sent, errors mapped, timeouts honoured."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from frontend.answers import Prediction, Referral
from frontend.client import BackendClient, ClientSettings
from frontend.errors import BackendError, BackendTimeout, BackendUnreachable
from frontend.model_info import ModelInfo, ReadyStatus
from tests.frontend.fake_backend import (
    DARK_REASONS,
    DR,
    FUNDUS_REFER_POINT,
    HEADLINES,
    NOT_INFORMATIVE_ADVICE,
    NOTE,
    OCT,
    OPERATING_POINT_TEXT,
    FakeBackend,
    FakeServer,
    png_bytes,
)


@pytest.fixture
def fake() -> Iterator[FakeBackend]:
    with FakeServer() as state:
        yield state


def client_for(url: str, **kw: object) -> BackendClient:
    return BackendClient(ClientSettings(backend_url=url, **kw))  # type: ignore[arg-type]


def closed_port_url() -> str:
    """A loopback URL nothing listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# ----------------------------------------------------------------------------- settings


def test_settings_from_env_defaults_and_overrides() -> None:
    assert ClientSettings.from_env({}) == ClientSettings()
    assert ClientSettings().backend_url == "http://localhost:8000"
    s = ClientSettings.from_env(
        {
            "RETINA_BACKEND_URL": "backend:8000/",
            "RETINA_API_KEY": " k3y ",
            "RETINA_TIMEOUT_S": "12.5",
            "RETINA_CONNECT_TIMEOUT_S": "1",
        }
    )
    assert s == ClientSettings("http://backend:8000", "k3y", 12.5, 1.0)
    assert ClientSettings.from_env({"RETINA_API_KEY": "  "}).api_key is None


@pytest.mark.parametrize("value", ["abc", "0", "-3"])
def test_settings_reject_bad_timeouts(value: str) -> None:
    with pytest.raises(ValueError, match="RETINA_TIMEOUT_S"):
        ClientSettings.from_env({"RETINA_TIMEOUT_S": value})


# ----------------------------------------------------------------------------- happy paths


def test_ready_and_models(fake: FakeBackend) -> None:
    c = client_for(fake.url)
    assert c.ready() == ReadyStatus("ready", max_upload_mb=10.0)  # the backend's limit, read for the uploader
    assert c.ready().text == "Backend ready"
    m, f = c.models()
    assert (m.id, m.task, m.classes, m.version, m.default) == ("oct-test", "oct", tuple(OCT), "1.2.3", True)
    assert m.metrics["val"]["accuracy"] == 0.9
    assert m.temperature == 1.5
    assert (m.calibration["ece_before"], m.calibration["ece_after"]) == (0.081, 0.023)
    assert (f.task, f.classes, f.calibration) == ("fundus", tuple(DR), {})
    # Referral operating points: the checkpoint's (fundus) or none (OCT), and the served thresholds.
    assert (m.operating_points, m.served_thresholds, m.informative) == ({}, {"urgent": 0.5, "routine": 0.5}, True)
    assert f.operating_points == {"refer": FUNDUS_REFER_POINT}
    assert f.served_thresholds == {"refer": 0.23, "urgent": 0.5}
    assert f.operating_points["refer"]["checks"]["idrid"]["sensitivity_ci95"] == [0.718, 0.871]
    assert f.informative is True
    # The backend's words, carried as sent.
    assert (m.disclaimer, f.disclaimer) == (NOTE, NOTE)
    assert f.operating_point_text == OPERATING_POINT_TEXT["fundus-test"]


def test_not_informative_model_and_referral(fake: FakeBackend) -> None:
    fake.models[1]["informative"] = False
    c = client_for(fake.url)
    assert [m.informative for m in c.models()] == [True, False]
    pred = c.predict(png_bytes(16), "fundus.png", "fundus-test")
    assert pred.gradable and pred.label == "Moderate"
    assert pred.referral is not None
    assert (pred.referral.level, pred.referral.advice) == ("not_informative", NOT_INFORMATIVE_ADVICE)
    assert (pred.referral.probability, pred.referral.threshold) == (None, None)


def test_model_info_without_calibration_fields() -> None:
    # An older backend sends neither field: nothing breaks, nothing is invented.
    m = ModelInfo.from_json({"id": "x", "task": "oct"})
    assert (m.temperature, m.calibration) == (None, {})
    assert (m.operating_points, m.served_thresholds, m.informative) == ({}, {}, True)
    assert (m.operating_point_text, m.disclaimer) == ({}, "")
    # Null fields and entries that are no operating point are dropped, not crashed on.
    m = ModelInfo.from_json(
        {
            "id": "x",
            "task": "fundus",
            "operating_points": {"refer": {"threshold": 0.3}, "junk": 1},
            "served_thresholds": {"refer": 0.3, "urgent": None},
            "informative": False,
        }
    )
    assert (m.operating_points, m.served_thresholds, m.informative) == (
        {"refer": {"threshold": 0.3}},
        {"refer": 0.3},
        False,
    )


def test_not_ready_carries_backend_detail(fake: FakeBackend) -> None:
    fake.ready = False
    status = client_for(fake.url).ready()
    assert status.state == "not_ready"
    assert status.text == f"Backend not ready: {fake.not_ready_detail}"


def test_predict_sends_file_model_and_api_key(fake: FakeBackend) -> None:
    data = png_bytes(16)
    pred = client_for(fake.url, api_key="secret").predict(data, "scan.png", "oct-test")
    assert (pred.label, pred.confidence, pred.model) == ("DRUSEN", 0.6, "oct-test")
    assert list(pred.probabilities) == OCT
    [req] = fake.calls("/predict")
    assert req.query == {"model": "oct-test"}
    assert req.headers.get("X-API-Key") == "secret"
    assert req.fields["file"] == [("scan.png", data, "image/png")]


def test_predict_parses_referral_and_gate(fake: FakeBackend) -> None:
    pred = client_for(fake.url).predict(png_bytes(16), "scan.png", "oct-test")
    assert pred.gradable and pred.reasons == ()
    assert pred.referral == Referral(
        level="routine",
        headline=HEADLINES["routine"],
        advice="Routine referral to an ophthalmologist: drusen suspected.",
        reason="P = 0.90 >= 0.50",
        probability=pytest.approx(0.9),  # type: ignore[arg-type]
        threshold=0.5,
        note=NOTE,
    )
    assert pred.gate is not None
    assert (pred.gate.modality, pred.gate.gradable, pred.gate.probabilities["oct"]) == ("oct", True, 0.97)


def test_predict_ungradable_has_no_diagnosis(fake: FakeBackend) -> None:
    pred = client_for(fake.url).predict(png_bytes(16), "dark_scan.png", "oct-test")
    assert not pred.gradable
    assert (pred.label, pred.confidence, pred.probabilities) == (None, None, None)
    assert pred.reasons == tuple(DARK_REASONS)
    assert pred.referral is not None and pred.referral.level == "ungradable"
    assert pred.referral.probability is None


def test_an_older_backend_without_the_words_parses_with_empty_ones(fake: FakeBackend) -> None:
    fake.contract_words = False
    c = client_for(fake.url)
    assert [(m.disclaimer, m.operating_point_text) for m in c.models()] == [("", {}), ("", {})]
    pred = c.predict(png_bytes(16), "scan.png", "oct-test")
    assert pred.referral is not None and (pred.referral.level, pred.referral.headline) == ("routine", "")


def test_exam_answer_is_typed(fake: FakeBackend) -> None:
    uploads = [("r.png", png_bytes(16)), ("l.png", png_bytes(17)), ("notretina.png", png_bytes(18))]
    exam = client_for(fake.url).predict_exam(uploads, ["right", "left", "left"], "auto")
    [req] = fake.calls("/predict/exam")
    assert [f[0] for f in req.fields["files"]] == ["r.png", "l.png", "notretina.png"]
    assert [v[1] for v in req.fields["laterality"]] == [b"right", b"left", b"left"]
    assert (exam.patient.level, exam.patient.headline, exam.patient.deciding_eye) == (
        "refer",
        HEADLINES["refer"],
        "right",
    )
    assert [(e.eye, e.n_images, e.n_gradable, e.referral.headline) for e in exam.eyes] == [
        ("right", 1, 1, HEADLINES["refer"]),
        ("left", 2, 1, HEADLINES["refer"]),
    ]
    assert exam.images[0].result is not None and exam.images[0].result.label == "Moderate"
    assert exam.images[2].error is not None and exam.images[2].error.error == "not_retinal_image"


def test_bad_exam_answer_is_bad_response(fake: FakeBackend) -> None:
    fake.queue_error(200, {"patient": {}, "eyes": [], "images": []})
    with pytest.raises(BackendError) as info:
        client_for(fake.url).predict_exam([("a.png", b"x")], [""], "auto")
    assert info.value.code == "bad_response"


def test_volume_answer(fake: FakeBackend) -> None:
    vol = client_for(fake.url).predict_volume(png_bytes(16), "volume.dcm", "oct-test")
    assert (vol.n_frames, vol.n_graded, vol.deciding_frames) == (3, 2, (0,))
    assert [f.status for f in vol.frames] == ["graded", "ungradable", "graded"]
    assert vol.prediction.referral is not None and vol.prediction.referral.headline == HEADLINES["routine"]


def test_prediction_from_json_optional_fields() -> None:
    base = {"model": "m", "model_version": "1", "task": "oct", "label": "CNV", "confidence": 0.9}
    # An older backend: no gradable, referral or gate keys.
    old = Prediction.from_json(base | {"probabilities": {"CNV": 0.9, "NORMAL": 0.1}})
    assert (old.gradable, old.referral, old.gate, old.reasons) == (True, None, None, ())
    # Not gradable and no gate (disabled): the label stays null, no reasons to give.
    none = Prediction.from_json(base | {"gradable": False, "label": None, "confidence": None, "probabilities": None})
    assert (none.label, none.probabilities, none.reasons) == (None, None, ())
    # "Gradable" without a diagnosis breaks the contract.
    with pytest.raises(ValueError, match="gradable"):
        Prediction.from_json(base | {"label": None, "probabilities": None})


def test_gradable_answer_without_label_is_bad_response(fake: FakeBackend) -> None:
    fake.queue_error(200, {"model": "m", "task": "oct", "gradable": True, "label": None, "probabilities": None})
    with pytest.raises(BackendError) as info:
        client_for(fake.url).predict(b"x", "x.png", "m")
    assert info.value.code == "bad_response"


def test_predict_auto_reports_the_model_that_answered(fake: FakeBackend) -> None:
    pred = client_for(fake.url).predict(png_bytes(16), "fundus_left.png", "auto")
    assert fake.calls("/predict")[0].query == {"model": "auto"}
    assert (pred.model, pred.task, pred.label) == ("fundus-test", "fundus", "Moderate")
    assert pred.referral is not None and pred.referral.level == "refer"
    assert pred.derived == {"referable": 0.7, "any": 0.9}


@pytest.mark.parametrize(
    ("filename", "code", "detail"),
    [
        ("notretina_cat.png", "not_retinal_image", "notretina_cat.png is neither an OCT B-scan"),
        ("fundus.png", "wrong_modality", "model 'oct-test' is for oct"),
    ],
)
def test_gate_refusals_are_backend_errors(fake: FakeBackend, filename: str, code: str, detail: str) -> None:
    with pytest.raises(BackendError) as info:
        client_for(fake.url).predict(png_bytes(16), filename, "oct-test")
    assert (info.value.status, info.value.code) == (422, code)
    assert detail in info.value.message


def test_report_returns_the_pdf(fake: FakeBackend) -> None:
    data = png_bytes(16)
    pdf = client_for(fake.url, api_key="k").report(data, "scan.png", "oct-test", method="eigencam")
    assert pdf.startswith(b"%PDF") and pdf == fake.reports[-1]
    [req] = fake.calls("/report")
    assert req.query == {"model": "oct-test", "method": "eigencam"}
    assert req.fields["file"] == [("scan.png", data, "image/png")]
    assert req.headers.get("X-API-Key") == "k"


def test_report_default_method(fake: FakeBackend) -> None:
    client_for(fake.url).report(b"img", "x.dcm", "oct-test")
    [req] = fake.calls("/report")
    assert req.query["method"] == "gradcam"
    # DICOM goes out under its own type (the backend sniffs the bytes anyway).
    assert req.fields["file"][0][2] in ("application/dicom", "application/octet-stream")


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (200, "not a pdf", "bad_response"),  # text/plain: a proxy page, say
        (200, {"label": "CNV"}, "bad_response"),  # JSON where a PDF was due
        (200, b"<html>oops</html>", "bad_response"),  # labelled application/pdf, but is not one
        (422, {"error": "not_retinal_image", "detail": "not a retina"}, "not_retinal_image"),
        (503, {"error": "not_ready", "detail": "loading"}, "not_ready"),
    ],
)
def test_report_errors(fake: FakeBackend, status: int, body: object, code: str) -> None:
    fake.queue_error(status, body)
    with pytest.raises(BackendError) as info:
        client_for(fake.url).report(b"x", "x.png", "oct-test")
    assert info.value.code == code


def test_no_api_key_header_by_default(fake: FakeBackend) -> None:
    client_for(fake.url).models()
    assert "X-API-Key" not in fake.calls("/models")[0].headers


def test_gradcam_params_and_png_decoding(fake: FakeBackend) -> None:
    cam = client_for(fake.url).gradcam(
        b"img", "x.tif", "oct-test", method="layercam", target="CNV", alpha=0.3, size="original"
    )
    assert cam.overlay_png == png_bytes() and cam.heatmap_png == png_bytes(colour=(0, 0, 255))
    assert (cam.method, cam.target) == ("layercam", "CNV")
    [req] = fake.calls("/gradcam")
    assert req.query == {
        "model": "oct-test",
        "method": "layercam",
        "target": "CNV",
        "alpha": "0.3",
        "size": "original",
        "format": "json",
    }
    assert req.fields["file"][0][2] == "image/tiff"


def test_gradcam_without_target_lets_backend_choose(fake: FakeBackend) -> None:
    client_for(fake.url).gradcam(b"img", "x.png", "oct-test")
    assert "target" not in fake.calls("/gradcam")[0].query


# ----------------------------------------------------------------------------- errors


def test_backend_error_detail_propagates(fake: FakeBackend) -> None:
    fake.queue_error(422, {"error": "invalid_image", "detail": "cannot decode scan.png: truncated JPEG"})
    with pytest.raises(BackendError) as info:
        client_for(fake.url).predict(b"junk", "scan.png", "oct-test")
    err = info.value
    assert (err.status, err.code) == (422, "invalid_image")
    assert err.message == "cannot decode scan.png: truncated JPEG"
    assert not isinstance(err, BackendUnreachable)


def test_fastapi_validation_list_detail_is_flattened(fake: FakeBackend) -> None:
    fake.queue_error(422, {"detail": [{"loc": ["query", "alpha"], "msg": "alpha must be <= 1"}]})
    with pytest.raises(BackendError) as info:
        client_for(fake.url).gradcam(b"x", "x.png", "m", alpha=3.0)
    assert (info.value.code, info.value.detail) == ("http_422", "alpha must be <= 1")


def test_non_json_error_body(fake: FakeBackend) -> None:
    fake.queue_error(502, "<html>Bad Gateway</html>")
    with pytest.raises(BackendError) as info:
        client_for(fake.url).models()
    assert info.value.status == 502
    assert info.value.message.startswith("HTTP 502")
    assert "<html>" not in info.value.message


def test_malformed_success_body_is_a_backend_error(fake: FakeBackend) -> None:
    fake.queue_error(200, {"unexpected": True})
    with pytest.raises(BackendError) as info:
        client_for(fake.url).predict(b"x", "x.png", "m")
    assert info.value.code == "bad_response"


def test_unknown_model_404(fake: FakeBackend) -> None:
    fake.queue_error(404, {"error": "unknown_model", "detail": "unknown model 'nope'"})
    with pytest.raises(BackendError, match="unknown model 'nope'") as info:
        client_for(fake.url).predict(b"x", "x.png", "nope")
    assert info.value.code == "unknown_model"


def test_connection_refused_is_unreachable() -> None:
    url = closed_port_url()
    c = client_for(url)
    with pytest.raises(BackendUnreachable) as info:
        c.models()
    assert info.value.message == f"Backend unreachable: connection refused at {url}"
    status = c.ready()
    assert status.state == "unreachable"
    assert status.text.startswith("Backend unreachable: ")
    assert "Traceback" not in status.text and "HTTPConnectionPool" not in status.text


def test_unresolvable_host_is_unreachable() -> None:
    # ".invalid" never resolves (RFC 2606), so this needs no network.
    status = client_for("http://no-such-host.invalid:8000", connect_timeout_s=2).ready()
    assert status.state == "unreachable"
    assert "no-such-host.invalid" in status.detail


def test_read_timeout(fake: FakeBackend) -> None:
    fake.delay_s = 1.0
    c = client_for(fake.url, timeout_s=0.2)
    with pytest.raises(BackendTimeout) as info:
        c.predict(b"x", "x.png", "m")
    assert info.value.code == "timeout"
    assert "0.2 s" in info.value.message
    # The status probe turns a slow backend into the "unreachable" line, not an exception.
    assert c.ready().state == "unreachable"


def test_ready_maps_auth_errors_to_not_ready(fake: FakeBackend) -> None:
    fake.queue_error(401, {"error": "unauthorized", "detail": "missing or invalid API key"})
    assert client_for(fake.url).ready().text == "Backend not ready: missing or invalid API key"
