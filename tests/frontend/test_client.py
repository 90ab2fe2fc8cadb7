"""frontend.client against a scripted HTTP server: requests sent, errors mapped, timeouts honoured."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from frontend.client import (
    BackendClient,
    BackendError,
    BackendTimeout,
    BackendUnreachable,
    ClientSettings,
    ReadyStatus,
)
from tests.frontend.fake_backend import OCT, FakeBackend, FakeServer, png_bytes


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
    assert c.ready() == ReadyStatus("ready")
    assert c.ready().text == "Backend ready"
    [m] = c.models()
    assert (m.id, m.task, m.classes, m.version, m.default) == ("oct-test", "oct", tuple(OCT), "1.2.3", True)
    assert m.metrics["val"]["accuracy"] == 0.9


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
