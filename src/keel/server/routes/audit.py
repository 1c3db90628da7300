"""The audit log over HTTP: list entries, export them as JSON lines, verify the hash chain.

The app authorizes these routes (`audit.read`) before a handler runs. Exports and verifications
are themselves audited: who took a copy of the log, and who checked it, is part of the trail.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.responses import StreamingResponse

from keel.errors import InvalidRequestError
from keel.governance.audit import AuditLog
from keel.server.access import audited
from keel.server.openapi import error_responses

__all__ = ["router"]

router = APIRouter(
    prefix="/v1/keel/audit", tags=["audit"], responses=error_responses(401, 403, 500)
)

# seq is a 64-bit integer column: beyond this no entry can exist, and neither SQLite nor
# PostgreSQL could bind the number (a 400, not a 500).
MAX_SEQ = 2**63 - 1
_SINCE = Query(None, max_length=64, description="ISO-8601, inclusive; naive times are UTC.")
_UNTIL = Query(None, max_length=64, description="ISO-8601, exclusive; naive times are UTC.")
_ACTOR = Query(None, max_length=255, description="The actor's name, exactly.")
_ACTION = Query(None, max_length=255, description='An action, or a prefix ending in "*".')
_AFTER_SEQ = Query(None, ge=0, le=MAX_SEQ, description="Entries after this seq (paging).")


def _audit_log(request: Request) -> AuditLog:
    found: AuditLog = request.app.state.keel.audit
    return found


def _time(value: str | None, param: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
        # Out-of-range offsets near year 1 or 9999 fail here, as a 400, not later as a 500.
        (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidRequestError(
            f"{param}: {value[:64]!r} is not an ISO-8601 time (e.g. 2026-03-01T12:00:00Z)",
            param=param,
        ) from None
    return parsed


def _filters(
    since: str | None, until: str | None, actor: str | None, action: str | None
) -> dict[str, Any]:
    return {
        "since": _time(since, "since"),
        "until": _time(until, "until"),
        "actor": actor,
        "action": action,
    }


@router.get("")
async def list_entries(
    request: Request,
    since: str | None = _SINCE,
    until: str | None = _UNTIL,
    actor: str | None = _ACTOR,
    action: str | None = _ACTION,
    limit: int = Query(100, ge=1, le=1000),
    after_seq: int | None = _AFTER_SEQ,
) -> dict[str, Any]:
    """Entries oldest first; page on with `after_seq` = `next_after_seq` while it isn't null."""
    filters = _filters(since, until, actor, action)
    audit = _audit_log(request)
    rows = await asyncio.to_thread(lambda: audit.query(**filters, limit=limit, after_seq=after_seq))
    next_after_seq = rows[-1]["seq"] if len(rows) == limit else None
    return {"object": "list", "data": rows, "next_after_seq": next_after_seq}


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "One entry a line, oldest first.",
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
        },
        **error_responses(400),
    },
)
async def export_entries(
    request: Request,
    since: str | None = _SINCE,
    until: str | None = _UNTIL,
    actor: str | None = _ACTOR,
    action: str | None = _ACTION,
    after_seq: int | None = _AFTER_SEQ,
) -> StreamingResponse:
    """Every matching entry, one JSON object a line (application/x-ndjson), streamed."""
    filters = _filters(since, until, actor, action)
    audit = _audit_log(request)
    detail = {"filters": {**filters, "after_seq": after_seq}}

    def lines() -> Iterator[str]:
        # A sync iterator: Starlette reads it in a worker thread, one page at a time. The
        # export's own entry is recorded once it is read, so it never lands inside itself.
        try:
            yield from audit.export(**filters, after_seq=after_seq)
        finally:
            audited(request, "audit.export", None, detail=detail)

    return StreamingResponse(
        lines(),
        media_type="application/x-ndjson",
        headers={"content-disposition": 'attachment; filename="keel-audit.jsonl"'},
    )


@router.post("/verify", responses=error_responses(413, 415))
async def verify_chain(request: Request) -> dict[str, Any]:
    """Recompute every entry's hash and link; name the first entry that does not hold."""
    audit = _audit_log(request)
    result = await asyncio.to_thread(audit.verify)
    detail = {
        "ok": result.ok,
        "checked": result.checked,
        "first_broken_seq": result.first_broken_seq,
    }
    audited(request, "audit.verify", None, detail=detail)
    return {
        "ok": result.ok,
        "checked": result.checked,
        "first_broken_seq": result.first_broken_seq,
        "reason": result.reason,
        "head_hash": result.head_hash,
    }
