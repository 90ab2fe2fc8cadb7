"""The audit table: one row per answered image (never pixels, filenames or patient identifiers).

The row's fields are declared once, in :class:`backend.app.audit_schemas.AuditRecord` (the ``/audit``
answer is built from it); this is their SQL table. Upgrades of an older table: :mod:`.upgrade`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import JSON, Column, Dialect, Float, Index, Integer, MetaData, String, Table
from sqlalchemy.types import DateTime, TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    PostgreSQL keeps ``timestamptz``; SQLite has no time zones, so the value is stored as
    naive UTC text (fixed width, so comparisons in ``WHERE ts >= ?`` sort correctly) and the
    UTC zone is put back when read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("audit timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

audit_table = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", UTCDateTime(), nullable=False),
    Column("request_id", String(64), nullable=False),
    Column("endpoint", String(32), nullable=False),
    Column("model_id", String(128), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("task", String(16), nullable=False),
    Column("input_sha256", String(64), nullable=False),
    Column("outcome", String(64), nullable=False),
    Column("label", String(128), nullable=True),
    Column("confidence", Float, nullable=True),
    Column("probabilities", JSON, nullable=True),
    Column("referral", String(32), nullable=True),
    Column("modality", String(32), nullable=True),
    Column("site", String(64), nullable=True),
    Column("client", String(64), nullable=True),
    Index("ix_audit_log_ts", "ts"),
)

COLUMNS = tuple(c.name for c in audit_table.columns)
