"""A request's trace: the spans Keel kept of it, for whoever may see its record."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Request

from keel.errors import InvalidRequestError, NotFoundError
from keel.server.access import current_actor
from keel.server.openapi import error_responses

# The same rule as the request record's: a trace is visible to whoever may see the record.
from keel.server.routes.operations import _visible_to
from keel.server.services import Services, services

__all__ = ["router"]

router = APIRouter(tags=["operations"])

_RECORD_ID_LENGTH = 64  # request_records.id


@router.get(
    "/v1/keel/requests/{request_id}/trace", responses=error_responses(400, 401, 403, 404, 500)
)
async def get_trace(
    request: Request, request_id: str, keel: Services = Depends(services)
) -> dict[str, Any]:
    """The call's spans, root first: attempts, cache lookup, guardrails, quota check, with
    their times and attributes (tokens, cost, decisions)."""
    if "\x00" in request_id:
        raise InvalidRequestError("request_id: must not contain NUL characters", param="request_id")
    if keel.tracing is None or not keel.tracing.keeping:
        raise NotFoundError(
            "Keel keeps no traces here: tracing.enabled is off (spans are only exported)"
        )
    row = None
    if len(request_id) <= _RECORD_ID_LENGTH:  # a longer id cannot exist
        row = await asyncio.to_thread(keel.database.get_record, request_id)
    team, caller = _visible_to(current_actor(request))
    if row is not None and (
        (team is not None and row["team"] != team)
        or (caller is not None and row["caller"] != caller)
    ):
        row = None  # someone else's: as if it didn't exist
    if row is None:
        raise NotFoundError(
            f"no request record {request_id[:64]!r} (records are written in batches)"
        )
    spans = await keel.tracing.spans_of(request_id)
    if not spans:
        raise NotFoundError(
            f"no trace of request {request_id!r} (its spans are written in batches, and kept "
            f"{keel.tracing.config.retention_days:g} days)"
        )
    return {
        "object": "trace",
        "request_id": request_id,
        "trace_id": spans[0]["trace_id"],
        "spans": [_public(span) for span in spans],
    }


def _public(span: dict[str, Any]) -> dict[str, Any]:
    return {
        "span_id": span["span_id"],
        "parent_span_id": span["parent_span_id"],
        "name": span["name"],
        "kind": span["kind"],
        "start_time": _iso(span["start_time"]),
        "end_time": _iso(span["end_time"]),
        "duration_ms": span["duration_ms"],
        "status": span["status"],
        "status_message": span["status_message"],
        "attributes": span["attributes"],
    }


def _iso(moment: datetime) -> str:
    # SQLite keeps no offset; every span is written in UTC.
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()
