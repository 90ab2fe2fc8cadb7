"""Reading the audit log: rows in a time window, oldest first, and exact paging on a timestamp cursor."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select

from backend.app.services.audit.schema import audit_table

_MAX_SAME_TIME = 1_000_000  # rows with one timestamp that one page may return (see page_of)
Query = Callable[[datetime | None, datetime | None, int, str | None], list[dict[str, Any]]]


def select_rows(
    engine: Engine, since: datetime | None, until: datetime | None, limit: int, model: str | None
) -> list[dict[str, Any]]:
    """Rows with ``since <= ts < until`` (either optional) of ``model`` (None: every model), oldest first (``ts``,
    then ``id``), at most ``limit``. Blocking."""
    t = audit_table
    stmt = select(t).order_by(t.c.ts, t.c.id).limit(limit)
    if since is not None:
        stmt = stmt.where(t.c.ts >= since)
    if until is not None:
        stmt = stmt.where(t.c.ts < until)
    if model is not None:
        stmt = stmt.where(t.c.model_id == model)
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(stmt).mappings()]


def page_of(
    query: Query, since: datetime | None, until: datetime | None, limit: int, model: str | None
) -> tuple[list[dict[str, Any]], datetime | None]:
    """One page of ``query`` and the ``since`` of the next page (``None``: this is the last).

    Exact paging on a timestamp cursor: one extra row is read; rows sharing the first
    unreturned row's timestamp are held back for the next page, so nothing is skipped or
    repeated even when several rows have the same microsecond. Only when more than
    ``limit`` rows share one microsecond is the page longer than ``limit`` (all of them).
    """
    rows = query(since, until, limit + 1, model)
    if len(rows) <= limit:
        return rows, None
    next_ts = rows[limit]["ts"]
    page = rows[:limit]
    while page and page[-1]["ts"] == next_ts:
        page.pop()
    if page:
        return page, next_ts
    step = next_ts + timedelta(microseconds=1)
    same = query(next_ts, step if until is None else min(until, step), _MAX_SAME_TIME, model)
    return same, step
