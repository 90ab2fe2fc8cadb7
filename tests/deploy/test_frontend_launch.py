"""The UI is launched for users, not developers: Streamlit's toolbar (its "Deploy" button) is hidden."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_streamlit_launch_hides_the_developer_toolbar() -> None:
    launches = {
        "scripts/run.sh": (ROOT / "scripts" / "run.sh").read_text(),
        "Dockerfile.frontend": (ROOT / "Dockerfile.frontend").read_text(),
    }
    for name, text in launches.items():
        line = next(ln for ln in text.splitlines() if "streamlit" in ln and "run" in ln and "frontend/app.py" in ln)
        flat = " ".join(line.replace('"', "").replace(",", " ").split())
        assert "--client.toolbarMode viewer" in flat, name
