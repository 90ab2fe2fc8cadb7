"""frontend.cache: one request per image and setting within a session; failures are never cached; no
answer is shared between sessions (each user's answer has its own backend call and audit row)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import streamlit as st

from frontend import cache
from frontend.client import BackendClient, ClientSettings
from frontend.errors import BackendError
from frontend.uploads import file_digest
from tests.frontend.fake_backend import FakeBackend, FakeServer, png_bytes


@pytest.fixture
def fake() -> Iterator[FakeBackend]:
    st.cache_data.clear()
    cache.clear()
    with FakeServer() as state:
        yield state
    st.cache_data.clear()
    cache.clear()


def _predict(client: BackendClient, data: bytes, model: str = "oct-test", version: str = "1") -> object:
    return cache.predict(file_digest(data), model, version, client.base_url, data, "a.png", client)


def _cam(client: BackendClient, data: bytes, **kw: object) -> object:
    args = {"method": "gradcam", "target": "CNV", "alpha": 0.5, "size": "input"} | kw
    return cache.gradcam(
        file_digest(data),
        "oct-test",
        "1",
        args["method"],
        args["target"],
        args["alpha"],
        args["size"],
        client.base_url,
        data,
        "a.png",
        client,
    )


def test_predict_once_per_image_model_and_version(fake: FakeBackend) -> None:
    client = BackendClient(ClientSettings(backend_url=fake.url))
    a, b = png_bytes(8), png_bytes(9)
    first = _predict(client, a)
    assert _predict(client, a) == first
    assert len(fake.calls("/predict")) == 1
    _predict(client, b)
    _predict(client, a, model="other")
    _predict(client, a, version="2")
    assert len(fake.calls("/predict")) == 4


def test_predict_keyed_on_backend_url(fake: FakeBackend) -> None:
    data = png_bytes(8)
    with FakeServer() as other:
        for url in (fake.url, other.url, fake.url):
            _predict(BackendClient(ClientSettings(backend_url=url)), data)
        assert len(other.calls("/predict")) == 1
    assert len(fake.calls("/predict")) == 1


def test_gradcam_once_per_setting(fake: FakeBackend) -> None:
    client = BackendClient(ClientSettings(backend_url=fake.url))
    data = png_bytes(8)
    _cam(client, data)
    _cam(client, data)
    assert len(fake.calls("/gradcam")) == 1
    for change in ({"method": "eigencam"}, {"target": "DME"}, {"target": None}, {"alpha": 0.7}, {"size": "original"}):
        _cam(client, data, **change)
    _cam(client, png_bytes(10))
    assert len(fake.calls("/gradcam")) == 7
    # Every variant is now cached.
    _cam(client, data, alpha=0.7)
    assert len(fake.calls("/gradcam")) == 7


def test_failures_are_not_cached(fake: FakeBackend) -> None:
    client = BackendClient(ClientSettings(backend_url=fake.url))
    data = png_bytes(8)
    fake.queue_error(503, {"error": "not_ready", "detail": "warming up"})
    with pytest.raises(BackendError, match="warming up"):
        _predict(client, data)
    # The backend is back: the same call reaches it again and succeeds.
    assert _predict(client, data).label == "DRUSEN"  # type: ignore[attr-defined]
    assert len(fake.calls("/predict")) == 2


def test_file_digest_is_content_hash() -> None:
    assert file_digest(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert file_digest(b"abc") != file_digest(b"abd")
    assert len(file_digest(b"")) == 64


def _report(client: BackendClient, data: bytes, method: str = "gradcam", name: str = "a.png") -> bytes:
    return cache.report(file_digest(data), "oct-test", "1", method, name, client.base_url, data, client)


def test_report_once_per_image_method_and_name(fake: FakeBackend) -> None:
    client = BackendClient(ClientSettings(backend_url=fake.url))
    data = png_bytes(8)
    first = _report(client, data)
    assert first.startswith(b"%PDF")
    assert _report(client, data) == first
    assert len(fake.calls("/report")) == 1
    # The PDF shows the method and prints the file name: each is its own report.
    _report(client, data, method="eigencam")
    _report(client, data, name="b.png")
    assert len(fake.calls("/report")) == 3
    assert fake.calls("/report")[1].query["method"] == "eigencam"


def test_report_failures_are_not_cached(fake: FakeBackend) -> None:
    client = BackendClient(ClientSettings(backend_url=fake.url))
    data = png_bytes(8)
    fake.queue_error(503, {"error": "not_ready", "detail": "warming up"})
    with pytest.raises(BackendError, match="warming up"):
        _report(client, data)
    assert _report(client, data).startswith(b"%PDF")
    assert len(fake.calls("/report")) == 2


def test_answers_are_not_shared_between_sessions(fake: FakeBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two browser sessions uploading the same bytes: two backend calls (two audit rows), one per session."""
    client = BackendClient(ClientSettings(backend_url=fake.url))
    data = png_bytes(8)
    sessions: dict[str, dict] = {"alice": {}, "bob": {}}
    for who in ("alice", "bob", "alice", "bob"):
        monkeypatch.setattr(cache, "_session_store", lambda who=who: sessions[who])
        _predict(client, data)
        _cam(client, data)
        _report(client, data)
    assert len(fake.calls("/predict")) == 2
    assert len(fake.calls("/gradcam")) == 2
    assert len(fake.calls("/report")) == 2
