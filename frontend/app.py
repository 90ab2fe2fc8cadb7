"""RetinaScope UI entrypoint: ``streamlit run frontend/app.py``.

Renders the sidebar shared by every page (backend status, task and model pickers) and hands
over to the page chosen with ``st.navigation``. Configuration comes from the environment:
``RETINA_BACKEND_URL`` (default ``http://localhost:8000``), ``RETINA_API_KEY``,
``RETINA_TIMEOUT_S`` and ``RETINA_CONNECT_TIMEOUT_S`` (see ``frontend/README.md``).
"""

import sys
from pathlib import Path

# `streamlit run frontend/app.py` puts frontend/ on sys.path, not the repository root, and the
# pages import the `frontend` package; make the root importable however the app is started.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import streamlit as st  # noqa: E402

from frontend.components.context import CTX_KEY  # noqa: E402
from frontend.components.sidebar import render_sidebar  # noqa: E402

st.set_page_config(page_title="RetinaScope", page_icon=":material/visibility:", layout="wide")

pages = st.navigation(
    [
        st.Page("app_pages/analyze.py", title="Analyze scans", icon=":material/biotech:", default=True),
        st.Page("app_pages/exam.py", title="Screening exam", icon=":material/visibility:"),
        st.Page("app_pages/models.py", title="Models", icon=":material/model_training:"),
    ]
)
st.session_state[CTX_KEY] = render_sidebar()
pages.run()
