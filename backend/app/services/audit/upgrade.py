"""In-place upgrades of an existing audit table, run once when the log connects.

``metadata.create_all`` creates a missing table but never adds a column to one that exists, and a
deployment's ``audit.sqlite`` (or PostgreSQL table) predates some columns. Each upgrade here only
adds a nullable column, so rows written before it read back with ``None`` there.
"""

from __future__ import annotations

import logging

from sqlalchemy import Table, inspect, text
from sqlalchemy.engine import Engine

logger = logging.getLogger(__name__)


def add_missing_columns(engine: Engine, table: Table) -> list[str]:
    """``ALTER TABLE ... ADD COLUMN`` for each nullable column of ``table`` the database lacks; their names."""
    present = {c["name"] for c in inspect(engine).get_columns(table.name)}
    added = []
    for column in table.columns:
        if column.name in present or not column.nullable:
            continue
        kind = column.type.compile(dialect=engine.dialect)
        try:
            with engine.begin() as conn:
                conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))
        except Exception:
            # Another worker added it first: fine if it is there now.
            if column.name not in {c["name"] for c in inspect(engine).get_columns(table.name)}:
                raise
        logger.info("audit table %s: added column %s", table.name, column.name)
        added.append(column.name)
    return added
