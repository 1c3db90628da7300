"""Drift over HTTP: compute (and store) a report for a model, and read its stored history.

The app authorizes these routes (`drift.read`) before a handler runs. Computing is a read of
the traffic that leaves a report behind, so charts and alerts can follow drift over time.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Query, Request

from keel.errors import InvalidRequestError, NotFoundError
from keel.monitoring.drift import DriftMonitor, drift_history
from keel.server.access import current_actor
from keel.server.openapi import error_responses

__all__ = ["router"]

router = APIRouter(
    prefix="/v1/keel/drift", tags=["drift"], responses=error_responses(400, 401, 403, 404, 500)
)


def _monitor(request: Request) -> DriftMonitor:
    monitor: DriftMonitor | None = getattr(request.app.state.keel, "drift", None)
    if monitor is None:
        raise NotFoundError("drift reports are not available on this server")
    return monitor


def _since(value: str | None, param: str = "since") -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidRequestError(
            f"{param}: {value[:64]!r} is not an ISO-8601 time (e.g. 2026-03-01T12:00:00Z)",
            param=param,
        ) from None


# Declared before the report route: `{name:path}` would otherwise take ".../history" too.
@router.get("/{name:path}/history")
async def history(
    request: Request,
    name: str,
    limit: int = Query(100, ge=1, le=1000),
    since: str | None = Query(None, max_length=64, description="ISO-8601; naive times are UTC."),
) -> dict[str, Any]:
    """Stored drift reports for a model (its name, or a target such as `name@production`),
    newest first."""
    _monitor(request)
    found_since = _since(since)
    database = request.app.state.keel.database
    rows = await asyncio.to_thread(
        drift_history, database, model=name, limit=limit, since=found_since
    )
    return {"object": "list", "data": rows}


@router.get("/{name:path}")
async def report(
    request: Request,
    name: str,
    window: str = Query(
        "24h", max_length=120, description="The current window: 30m, 24h, 7d or START/END."
    ),
    reference: Literal["benchmark", "window"] = Query(
        "window", description="Compare against the registry benchmark or a traffic window."
    ),
    reference_window: str | None = Query(
        None,
        max_length=120,
        description="For reference=window: a duration (the period right before the current "
        "window) or START/END. Default: as long as the current window, right before it.",
    ),
    until: str | None = Query(
        None, max_length=64, description="Where a duration window ends (ISO-8601); now if unset."
    ),
) -> dict[str, Any]:
    """Compute drift for a model (`name`, `name@alias`, `name@3` or a gateway model id),
    store the report and return it."""
    monitor = _monitor(request)
    if reference == "benchmark" and reference_window is not None:
        raise InvalidRequestError(
            "reference_window applies to reference=window only", param="reference_window"
        )
    end = _since(until, "until")
    if end is not None and "/" in window:
        raise InvalidRequestError("until applies to duration windows only", param="until")
    actor = current_actor(request)
    return await asyncio.to_thread(
        monitor.compute,
        name,
        window=window,
        reference=reference,
        reference_window=reference_window,
        until=end,
        created_by=actor.name,
    )
