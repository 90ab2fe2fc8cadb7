"""End to end in a real browser: backend + ``streamlit run`` on free ports, Debian chromium via Playwright.

Uploads a real OCT B-scan through the page's file input, waits for the referral advice (when the
backend gives one), the predicted label and the CAM overlay image, and saves a screenshot under
the test's tmp dir (and to ``$RETINA_SCREENSHOT_OUT`` when set, which is how
``docs/screenshot.png`` is made).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from retina.paths import REPO_ROOT as REPO
from retina.registry import default_for
from tests.support import APP, backend_predict, free_port, serve

pytestmark = [pytest.mark.browser, pytest.mark.slow]

WAIT_MS = 60_000
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def chromium_path() -> str | None:
    """Debian's chromium (``RETINA_CHROMIUM`` overrides); never a downloaded browser."""
    for candidate in (os.environ.get("RETINA_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def streamlit_url(backend_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETINA_")}
    env |= {"RETINA_BACKEND_URL": backend_url, "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP.relative_to(REPO)),
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--server.headless",
        "true",
        "--server.fileWatcherType",
        "none",
        "--browser.gatherUsageStats",
        "false",
        # What a user of the deployed app sees: no developer "Deploy" button in the toolbar.
        "--client.toolbarMode",
        "viewer",
    ]
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("streamlit") / "streamlit.log"
    with serve(cmd, env, f"{url}/_stcore/health", log):
        yield url


def test_upload_predict_and_cam_in_browser(
    streamlit_url: str, backend_url: str, oct_image: Path, tmp_path: Path
) -> None:
    exe = chromium_path()
    if exe is None:
        pytest.skip("no chromium binary (apt-get install chromium, or set RETINA_CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python package) not installed")
    expected = backend_predict(backend_url, oct_image, default_for("oct").key)

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, timeout=WAIT_MS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1150})
            page.set_default_timeout(WAIT_MS)
            page.goto(streamlit_url)
            page.get_by_text("Backend ready", exact=True).wait_for()

            page.locator('input[type="file"]').set_input_files(str(oct_image))

            if referral := expected.get("referral"):
                # The referral box sits in a keyed container (CSS class st-key-referral-<upload>).
                box = page.locator('[class*="st-key-referral-"]').first
                # The backend's headline (its advice from a backend older than the issue-28 words).
                words = referral.get("headline") or referral["advice"]
                sync_api.expect(box).to_contain_text(words, timeout=WAIT_MS)
                sync_api.expect(box).to_contain_text(referral["note"])

            label = page.locator('[data-testid="stMetric"]').filter(has_text="Predicted class")
            sync_api.expect(label).to_contain_text(expected["label"], timeout=WAIT_MS)
            cam = page.locator('img[alt^="CAM overlay"]')
            cam.wait_for(state="visible")
            # Loaded, not just inserted: the PNG decoded to a real size.
            page.wait_for_function(
                "() => { const i = document.querySelector('img[alt^=\"CAM overlay\"]');"
                " return i && i.complete && i.naturalWidth > 0; }"
            )
            page.locator('[data-testid="stVegaLiteChart"]').first.wait_for(state="visible")
            # No traceback box and no error message anywhere on the page; an urgent referral is
            # shown in the error style on purpose, so alerts inside the referral box do not count.
            assert page.locator('[data-testid="stException"]').count() == 0
            errors = page.locator('[data-testid="stAlertContentError"]').count()
            referral_errors = page.locator('[class*="st-key-referral-"] [data-testid="stAlertContentError"]').count()
            assert errors == referral_errors

            shot = tmp_path / "retinascope-ui.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if out := os.environ.get("RETINA_SCREENSHOT_OUT"):
                Path(out).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(shot, out)
        finally:
            browser.close()


def test_oct_volume_in_browser(streamlit_url: str, backend_url: str, tmp_path: Path) -> None:
    """The sample OCT volume: the volume's answer, the strip chart, the B-scan slider and the shown B-scan's CAM.

    The screenshot also goes to ``$RETINA_VOLUME_SCREENSHOT_OUT`` when set.
    """
    exe = chromium_path()
    if exe is None:
        pytest.skip("no chromium binary (apt-get install chromium, or set RETINA_CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python package) not installed")
    import requests

    volume = next((REPO / "samples" / "oct").glob("*-volume.dcm"))
    with volume.open("rb") as f:
        r = requests.post(f"{backend_url}/predict/volume", params={"model": "oct"}, files={"file": f}, timeout=120)
    r.raise_for_status()
    expected = r.json()

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, timeout=WAIT_MS)
        try:
            # Tall enough for the whole card: Streamlit scrolls inside its own container, not the page.
            page = browser.new_page(viewport={"width": 1500, "height": 2000})
            page.set_default_timeout(WAIT_MS)
            page.goto(streamlit_url)
            page.get_by_text("Backend ready", exact=True).wait_for()
            page.locator('input[type="file"]').set_input_files(str(volume))

            box = page.locator('[class*="st-key-referral-"]').first
            words = expected["referral"].get("headline") or expected["referral"]["advice"]
            sync_api.expect(box).to_contain_text(words, timeout=WAIT_MS)
            label = page.locator('[data-testid="stMetric"]').filter(has_text="Volume class")
            sync_api.expect(label).to_contain_text(expected["label"], timeout=WAIT_MS)
            sync_api.expect(page.get_by_text("OCT volume", exact=False).first).to_be_visible()
            first = expected["deciding_frames"][0]
            page.wait_for_function(
                '(n) => { const i = document.querySelector(`img[alt$="B-scan ${n}"]`);'
                " return i && i.complete && i.naturalWidth > 0; }",
                arg=first,
            )
            sync_api.expect(page.locator('[data-testid="stSlider"]').filter(has_text="B-scan")).to_be_visible()
            # Streamlit draws the charts after the rest of the card, and slower under a loaded CI
            # machine: wait for the third one (at least three: probabilities, strip, per-frame)
            # instead of counting what happens to be there at this instant.
            charts = page.locator('[data-testid="stVegaLiteChart"]')
            charts.nth(2).wait_for(state="attached", timeout=WAIT_MS)
            assert charts.count() >= 3
            assert page.locator('[data-testid="stException"]').count() == 0
            errors = page.locator('[data-testid="stAlertContentError"]').count()
            referral_errors = page.locator('[class*="st-key-referral-"] [data-testid="stAlertContentError"]').count()
            assert errors == referral_errors
            page.wait_for_timeout(1500)  # let the charts finish drawing before the picture

            shot = tmp_path / "retinascope-volume.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if out := os.environ.get("RETINA_VOLUME_SCREENSHOT_OUT"):
                Path(out).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(shot, out)
        finally:
            browser.close()
