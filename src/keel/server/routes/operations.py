"""Operating Keel: liveness, readiness, deployment health, and the request records."""

from __future__ import annotations

import asyncio
from datetime import UTC
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import JSONResponse

from keel import __version__
from keel.errors import InvalidRequestError, NotFoundError
from keel.governance.permissions import role_allows
from keel.identity import Actor
from keel.server.access import current_actor
from keel.server.openapi import Responses, error_responses
from keel.server.services import Services, services

__all__ = ["router"]

router = APIRouter(tags=["operations"])

# PostgreSQL refuses NUL in text: a filter holding one is refused here, never sent to it.
_NO_NUL = r"^[^\x00]*$"
_RECORD_ID_LENGTH = 64  # request_records.id
# The probes are public; every other route here authenticates.
_GUARDED = error_responses(401, 403, 500)
_READINESS = {
    "type": "object",
    "required": ["status", "checks"],
    "properties": {
        "status": {"enum": ["ready", "not ready"]},
        "checks": {"type": "object"},
    },
}
_READY: Responses = {
    200: {"content": {"application/json": {"schema": _READINESS}}},
    503: {
        "description": "Not ready: `checks` says what is not.",
        "content": {"application/json": {"schema": _READINESS}},
    },
}


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok", "version": __version__}


@router.get("/readyz", responses=_READY)
async def readyz(keel: Services = Depends(services)) -> JSONResponse:
    checks: dict[str, Any] = {}
    try:
        await asyncio.to_thread(keel.database.ping)
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    models: dict[str, str] = {}
    for provider in keel.router.providers:
        if provider.is_local:
            reason = provider.unready_reason()
            models[provider.config.id] = "ok" if reason is None else f"not loadable: {reason}"
    checks["local_models"] = models
    # The PII analyzer loads in the background at start-up; until then screening would stall.
    checks["pii_analyzer"] = "ok" if keel.guardrails.loaded else "loading"
    ready = (
        checks["database"] == "ok"
        and all(state == "ok" for state in models.values())
        and checks["pii_analyzer"] == "ok"
    )
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
    )


@router.get("/v1/keel/cache", responses=_GUARDED)
async def cache_stats(keel: Services = Depends(services)) -> dict[str, Any]:
    """This replica's response caches: sizes, hits, misses and the precision guard's refusals."""
    return keel.gateway.caching.stats()


@router.get("/v1/keel/deployments", responses=_GUARDED)
async def list_deployments(keel: Services = Depends(services)) -> dict[str, Any]:
    """Every deployment with its group, circuit state, latency, load and capacity."""
    return {"object": "list", "data": keel.router.deployments()}


@router.get("/v1/keel/requests", responses=_GUARDED)
async def list_requests(
    request: Request,
    keel: Services = Depends(services),
    limit: int = Query(50, ge=1, le=1000),
    model: str | None = Query(None, max_length=255, pattern=_NO_NUL),
) -> dict[str, Any]:
    """Recent records: everyone's for maintainers and admins, your team's (or your own,
    without a team) for the other roles."""
    team, caller = _visible_to(current_actor(request))
    rows = await asyncio.to_thread(
        lambda: keel.database.recent_records(limit, model, team=team, caller=caller)
    )
    return {"object": "list", "data": [_public(row) for row in rows]}


def _visible_to(actor: Actor) -> tuple[str | None, str | None]:
    if role_allows(actor.role, "directory.read"):
        return None, None
    return (actor.team, None) if actor.team else (None, actor.name)


@router.get("/v1/keel/requests/{request_id}", responses={**_GUARDED, **error_responses(400, 404)})
async def get_request(
    request: Request, request_id: str, keel: Services = Depends(services)
) -> dict[str, Any]:
    if "\x00" in request_id:
        raise InvalidRequestError("request_id: must not contain NUL characters", param="request_id")
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
    return _public(row)


def _public(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    created = row["created_at"]
    # SQLite keeps no offset; every record is written in UTC.
    row["created_at"] = (created if created.tzinfo else created.replace(tzinfo=UTC)).isoformat()
    return row
