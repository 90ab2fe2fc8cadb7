"""GET /audit: the operator's view of the prediction audit log (operator key required, RETINA_OPERATOR_KEY)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from backend.app.api.deps import AuditDep, require_api_key, require_operator
from backend.app.audit_schemas import AuditResponse
from backend.app.schemas import ErrorResponse
from backend.app.services.errors import invalid_parameter

MAX_LIMIT = 1000

# An unencoded '+' in a query string arrives as a space: "...T10:00:00 02:00" meant "+02:00".
_SPACED_OFFSET = re.compile(r" (\d{2}(?::?\d{2})?)$")


# The key and the role are checked before the body by core/auth.AuthMiddleware; these dependencies
# document the header and refuse anything that bypassed it.
router = APIRouter(tags=["ops"], dependencies=[Depends(require_api_key), Depends(require_operator)])


def parse_time(name: str, value: str | None) -> datetime | None:
    """ISO 8601 (``2025-01-31``, ``2025-01-31T08:00``, ``...Z``, ``...+02:00``) -> aware UTC; naive = UTC."""
    if value is None or not value.strip():
        return None
    text = _SPACED_OFFSET.sub(r"+\1", value.strip())
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise invalid_parameter(f"{name}={value!r} is not an ISO 8601 date or time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        raise invalid_parameter(f"{name}={value!r} is out of range") from None


@router.get(
    "/audit",
    response_model=AuditResponse,
    summary="Audit log of answered predictions (requires the operator key)",
    responses={
        401: {"model": ErrorResponse, "description": "`unauthorized`: missing or wrong X-API-Key"},
        403: {
            "model": ErrorResponse,
            "description": "`forbidden`: a client key (the operator key is needed); "
            "`audit_requires_api_key`: no RETINA_OPERATOR_KEY configured",
        },
        422: {"model": ErrorResponse, "description": "`invalid_parameter`: bad `since`/`until`/`limit`"},
        503: {"model": ErrorResponse, "description": "`audit_unavailable`: the audit database cannot be read"},
    },
)
def read_audit(  # plain def: the query blocks, so FastAPI runs it in its thread pool
    audit: AuditDep,
    since: Annotated[str | None, Query(description="ISO 8601; entries at or after it (naive = UTC).")] = None,
    until: Annotated[str | None, Query(description="ISO 8601; entries strictly before it.")] = None,
    model: Annotated[str | None, Query(description="Only this model id.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"Page size (at most {MAX_LIMIT}).")] = 100,
) -> dict[str, Any]:
    """Every answered (or gate-refused) /predict, /predict/batch item, /gradcam and /report: time, request id, model and
    version, SHA-256 of the upload, outcome, label, probabilities, referral. Page with `next_since`.

    Example: `curl -H "X-API-Key: $KEY" 'localhost:8000/audit?since=2025-01-31T00:00Z&limit=500'`.
    """
    entries, next_since = audit.page(parse_time("since", since), parse_time("until", until), limit, model)
    return {"entries": entries, "next_since": next_since}
