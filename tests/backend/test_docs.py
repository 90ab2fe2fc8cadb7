"""/docs and /redoc work offline (no external host) and behind a path-stripping proxy (``root_path``)."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from tests.backend.helpers import app_client, base_settings

# Any absolute URL or protocol-relative reference (//cdn...) in src/href/url(...) or a JS string.
EXTERNAL = re.compile(r"""(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}""")


def _assets(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)=["']([^"']+)["']|url: ?["']([^"']+)["']""", html)


def test_docs_reference_no_external_host_and_their_assets_are_served(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        r = client.get(page)
        assert r.status_code == 200
        html = r.text
        refs = [a or b for a, b in _assets(html)]
        assert refs, html
        for ref in refs:
            assert not EXTERNAL.match(ref), f"{page} loads {ref} from another host"
            assert ref.startswith("/"), ref
            got = client.get(ref)
            assert got.status_code == 200, ref
            assert len(got.content) > 1000, ref
        assert not EXTERNAL.search(html.split("<body", 1)[0] + "".join(re.findall(r"<script[^>]*>", html)))
    # The OpenAPI document itself, which the page fetches.
    assert client.get("/openapi.json").json()["info"]["title"] == "RetinaScope API"


def _assert_prefixed(c: TestClient, headers: dict[str, str], prefix: str) -> None:
    # The proxy strips the prefix; the app is still called at /docs, and must point the browser at it.
    html = c.get("/docs", headers=headers).text
    assert f"'{prefix}/openapi.json'" in html, html
    assert f"{prefix}/docs-static/swagger-ui-bundle.js" in html
    spec = c.get("/openapi.json", headers=headers).json()
    assert spec["servers"] == [{"url": prefix}]  # Swagger's "Try it out" calls /api/predict


def test_docs_behind_a_proxy_prefix_fetch_through_that_prefix(api_models_dir: Path, client: TestClient) -> None:
    _assert_prefixed(client, {"X-Forwarded-Prefix": "/api"}, "/api")
    # Direct callers (the UI, curl on the host) keep unprefixed URLs.
    assert "'/openapi.json'" in client.get("/docs").text
    assert "servers" not in client.get("/openapi.json").json()
    # Not a plain path: ignored (it would be written into the page).
    assert "evil" not in client.get("/docs", headers={"X-Forwarded-Prefix": "/a'</script>evil"}).text
    with app_client(base_settings(api_models_dir, root_path="/api/")) as c:
        _assert_prefixed(c, {}, "/api")


def test_health_and_ready_state_the_upload_limit(client: TestClient) -> None:
    settings = client.app.state.settings  # type: ignore[attr-defined]
    for path in ("/health", "/ready"):
        limits = client.get(path).json()["limits"]
        assert limits == {"max_upload_mb": settings.max_upload_mb, "max_batch_files": settings.max_batch_files}
