"""Streamlit components, one module per part of a page; the pages in ``app_pages/`` compose them.

No HTTP here: every call goes through ``frontend.cache`` to ``frontend.client``. Text and tables come
from the pure modules ``frontend.text`` and ``frontend.tables``; the referral words from the backend.
"""
