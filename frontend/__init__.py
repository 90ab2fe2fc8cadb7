"""Streamlit UI of RetinaScope: an HTTP client of the backend only (no torch, no ``retina`` import).

``frontend/client.py`` is the single module that talks to the network; ``frontend/app.py`` is
the ``streamlit run`` entrypoint and ``frontend/app_pages/`` holds its pages.
"""
