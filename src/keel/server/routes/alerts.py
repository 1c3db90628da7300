"""Alerts over HTTP: current states, history, deliveries, and the rules (those of keel.yaml,
read-only here, and those created over REST), under /v1/keel/alerts.

The app authorizes every route (`alerts.read`, `alerts.write`) before a handler runs; rule
changes are audited.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Body, Path, Query, Request

from keel.monitoring.alerts_config import AlertRuleConfig
from keel.monitoring.alerts_service import Alerts
from keel.server.access import audited, current_actor
from keel.server.jsonable import to_jsonable
from keel.server.openapi import error_responses

__all__ = ["router"]

router = APIRouter(
    prefix="/v1/keel/alerts", tags=["alerts"], responses=error_responses(401, 403, 500)
)

_MAX_ID = 2**31 - 1
_RULE_NAME = Path(..., min_length=1, max_length=128, pattern=r"^[^\x00]*$")
_RULE_FILTER = Query(None, min_length=1, max_length=128, pattern=r"^[^\x00]*$")
_LIMIT = Query(100, ge=1, le=1000)
_BEFORE_ID = Query(None, ge=1, le=_MAX_ID, description="Entries older than this id (paging).")
State = Literal["inactive", "pending", "firing", "resolved"]


def _alerts(request: Request) -> Alerts:
    found: Alerts = request.app.state.keel.alerts
    return found


def _listing(items: list[dict[str, Any]], *, page_size: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"object": "list", "data": to_jsonable(items)}
    if page_size is not None:
        full = len(items) == page_size
        body["next_before_id"] = items[-1]["id"] if full and items else None
    return body


@router.get("")
async def current_states(
    request: Request, state: State | None = Query(None, description="Only this state.")
) -> dict[str, Any]:
    """Every rule's current state: inactive, pending, firing or resolved."""
    alerts = _alerts(request)
    return _listing(await asyncio.to_thread(alerts.current, state))


@router.get("/history", responses=error_responses(400))
async def history(
    request: Request,
    rule: str | None = _RULE_FILTER,
    limit: int = _LIMIT,
    before_id: int | None = _BEFORE_ID,
) -> dict[str, Any]:
    """State transitions, newest first; page on with `before_id` = `next_before_id`."""
    alerts = _alerts(request)
    rows = await asyncio.to_thread(
        lambda: alerts.history(rule=rule, limit=limit, before_id=before_id)
    )
    return _listing(rows, page_size=limit)


@router.get("/deliveries", responses=error_responses(400))
async def deliveries(
    request: Request,
    rule: str | None = _RULE_FILTER,
    history_id: int | None = Query(None, ge=1, le=_MAX_ID, description="One transition's."),
    limit: int = _LIMIT,
    before_id: int | None = _BEFORE_ID,
) -> dict[str, Any]:
    """What each notifier did with each transition (delivered or failed, attempts, HTTP
    status), newest first."""
    alerts = _alerts(request)
    rows = await asyncio.to_thread(
        lambda: alerts.deliveries(
            rule=rule, history_id=history_id, limit=limit, before_id=before_id
        )
    )
    return _listing(rows, page_size=limit)


@router.get("/rules")
async def list_rules(request: Request) -> dict[str, Any]:
    """Every rule, from keel.yaml (`source: config`) and created over REST (`source: api`)."""
    alerts = _alerts(request)
    return _listing(await asyncio.to_thread(alerts.list_rules))


@router.post("/rules", status_code=201, responses=error_responses(400, 409, 413, 415))
async def create_rule(request: Request, rule: AlertRuleConfig = Body(...)) -> dict[str, Any]:
    """Create a rule; an unknown metric, a bad duration or an unknown notifier is a 400
    naming the field."""
    alerts = _alerts(request)
    actor = current_actor(request).name
    created = await asyncio.to_thread(alerts.create_rule, rule, actor)
    audited(request, "alerts.rule.create", rule.name, after=to_jsonable(created))
    result: dict[str, Any] = to_jsonable(created)
    return result


@router.get("/rules/{name}", responses=error_responses(400, 404))
async def get_rule(request: Request, name: str = _RULE_NAME) -> dict[str, Any]:
    alerts = _alerts(request)
    result: dict[str, Any] = to_jsonable(await asyncio.to_thread(alerts.get_rule, name))
    return result


@router.delete("/rules/{name}", responses=error_responses(400, 404, 409))
async def delete_rule(request: Request, name: str = _RULE_NAME) -> dict[str, Any]:
    """Delete a rule created over REST (a keel.yaml rule is a 409: change the file). Its
    history stays."""
    alerts = _alerts(request)
    before = await asyncio.to_thread(alerts.get_rule, name)
    await asyncio.to_thread(alerts.delete_rule, name)
    audited(request, "alerts.rule.delete", name, before=to_jsonable(before))
    return {"object": "alert_rule", "name": name, "deleted": True}


async def _toggle(request: Request, name: str, enabled: bool) -> dict[str, Any]:
    alerts = _alerts(request)
    changed = await asyncio.to_thread(alerts.set_enabled, name, enabled)
    action = "alerts.rule.enable" if enabled else "alerts.rule.disable"
    audited(request, action, name, after=to_jsonable(changed))
    result: dict[str, Any] = to_jsonable(changed)
    return result


@router.post("/rules/{name}/disable", responses=error_responses(400, 404, 409, 413, 415))
async def disable_rule(request: Request, name: str = _RULE_NAME) -> dict[str, Any]:
    """Stop evaluating a REST rule (its state and history stay)."""
    return await _toggle(request, name, False)


@router.post("/rules/{name}/enable", responses=error_responses(400, 404, 409, 413, 415))
async def enable_rule(request: Request, name: str = _RULE_NAME) -> dict[str, Any]:
    return await _toggle(request, name, True)
