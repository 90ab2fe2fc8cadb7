"""The durable audit log of every answered image, in any SQLAlchemy database (SQLite file by default).

Its stages: the table (:mod:`.schema`) and its in-place upgrades (:mod:`.upgrade`); where it lives and how
it is opened (:mod:`.database`); the group-commit writer (:mod:`.writer`, :class:`AuditLog`); what of an
answer is written (:mod:`.answers`, :func:`audit_prediction`); reading it back (:mod:`.queries`). A row's
fields are declared once, in :class:`backend.app.audit_schemas.AuditRecord`.
"""

from __future__ import annotations

from backend.app.audit_schemas import ENDPOINTS, AuditRecord
from backend.app.services.audit.answers import audit_prediction
from backend.app.services.audit.database import DEFAULT_PATH, Synchronous, make_engine, resolve_url
from backend.app.services.audit.schema import COLUMNS, audit_table
from backend.app.services.audit.writer import AuditLog, AuditUnavailable

__all__ = [
    "COLUMNS",
    "DEFAULT_PATH",
    "ENDPOINTS",
    "AuditLog",
    "AuditRecord",
    "AuditUnavailable",
    "Synchronous",
    "audit_prediction",
    "audit_table",
    "make_engine",
    "resolve_url",
]
