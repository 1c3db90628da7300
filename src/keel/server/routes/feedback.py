"""Feedback on requests and the quality computed from it: `POST /v1/keel/feedback`,
`GET /v1/keel/feedback?request_id=...` and `GET /v1/keel/quality?model=...`.

Feedback is for a request its poster may see: the same rule as `GET /v1/keel/requests/{id}`
(maintainers and admins see every request, the other roles their team's, or their own without
a team). Posting is an inference-class route, so an application's inference key can send its
users' thumbs.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import Field
from starlette.responses import JSONResponse

from keel.errors import InvalidRequestError, NotFoundError, PermissionDeniedError
from keel.governance.permissions import role_allows
from keel.identity import Actor
from keel.monitoring.feedback import Feedback, FeedbackStore, RequestFacts, Source
from keel.monitoring.feedback_tables import LABEL_LENGTH, NAME_LENGTH
from keel.monitoring.quality import GROUPINGS, parse_window, quality_report
from keel.server.access import current_actor
from keel.server.body import StoredBody
from keel.server.openapi import Responses, error_responses
from keel.server.services import Services, services

__all__ = ["FeedbackBody", "router"]

router = APIRouter(tags=["monitoring"], responses=error_responses(401, 403, 500))

_NO_NUL = r"^[^\x00]*$"
_RECORD_ID_LENGTH = 64  # request_records.id
# A record still queued in the recorder is written within its flush interval; a recorder that
# never goes idle under load must not hold the request for longer than this.
_FLUSH_WAIT_S = 2.0
_VERDICT_FIELDS = ("thumbs", "label", "score", "correction", "comment")
_POSTED: Responses = {
    200: {
        "description": "Replaced the feedback this request already had from that source "
        "under that name."
    },
    **error_responses(400, 404, 413, 415),
}


class FeedbackBody(StoredBody):
    request_id: str = Field(min_length=1, max_length=_RECORD_ID_LENGTH)
    source: Source = "human"
    name: str = Field(default="default", min_length=1, max_length=NAME_LENGTH)
    thumbs: Literal["up", "down"] | None = None
    label: str | None = Field(default=None, min_length=1, max_length=LABEL_LENGTH)
    expected: str | None = Field(default=None, min_length=1, max_length=LABEL_LENGTH)
    score: float | None = Field(default=None, allow_inf_nan=False)
    correction: str | None = Field(default=None, max_length=100_000)
    comment: str | None = Field(default=None, max_length=10_000)


@router.post("/v1/keel/feedback", status_code=201, responses=_POSTED)
async def post_feedback(
    request: Request, body: FeedbackBody, keel: Services = Depends(services)
) -> JSONResponse:
    """Feedback on one request; the same (request_id, source, name) again replaces it."""
    _check_fields(body)
    actor = current_actor(request)
    record = await _visible_record(keel, actor, body.request_id)
    item = Feedback(
        source=body.source,
        name=body.name,
        thumbs=body.thumbs,
        label=body.label,
        expected=body.expected,
        score=body.score,
        correction=body.correction,
        comment=body.comment,
    )
    store = FeedbackStore(keel.database)
    stored, replaced = await asyncio.to_thread(
        store.record, RequestFacts.from_record(record), item, by=actor.name
    )
    return JSONResponse({**stored, "replaced": replaced}, status_code=200 if replaced else 201)


@router.get("/v1/keel/feedback", responses=error_responses(400, 404))
async def list_feedback(
    request: Request,
    keel: Services = Depends(services),
    request_id: str = Query(..., min_length=1, max_length=_RECORD_ID_LENGTH, pattern=_NO_NUL),
) -> dict[str, Any]:
    """Every piece of feedback on one request, oldest first."""
    await _visible_record(keel, current_actor(request), request_id)
    rows = await asyncio.to_thread(FeedbackStore(keel.database).for_request, request_id)
    return {"object": "list", "data": rows}


@router.get("/v1/keel/quality", responses=error_responses(400))
async def get_quality(
    keel: Services = Depends(services),
    model: str = Query(..., min_length=1, max_length=255, pattern=_NO_NUL),
    window: str = Query("24h", max_length=40),
    by: str | None = Query(None, max_length=40),
    registry_version: str | None = Query(None, min_length=1, max_length=255, pattern=_NO_NUL),
    deployment: str | None = Query(None, min_length=1, max_length=255, pattern=_NO_NUL),
    source: Source | None = Query(None),
    end: datetime | None = Query(None, description="ISO 8601; now by default."),
) -> dict[str, Any]:
    """Accuracy, precision, recall and F1 of `model` over `window`, from labelled feedback."""
    try:
        window_s = parse_window(window)
    except ValueError as exc:
        raise InvalidRequestError(f"window: {exc}", param="window") from None
    grouping = next((name for name in GROUPINGS if name == by), None)
    if by is not None and grouping is None:
        raise InvalidRequestError(
            f"by: {by[:40]!r} is not a grouping; use one of {', '.join(GROUPINGS)}", param="by"
        )
    report = await asyncio.to_thread(
        quality_report,
        keel.database,
        model=model,
        window_s=window_s,
        end=end,
        by=grouping,
        registry_version=registry_version,
        deployment=deployment,
        source=source,
    )
    return {**report, "window": window}


def _check_fields(body: FeedbackBody) -> None:
    if (body.label is None) != (body.expected is None):
        missing = "expected" if body.expected is None else "label"
        raise InvalidRequestError(
            f"{missing}: a label is scored against its expected value; send both",
            param=missing,
        )
    if all(getattr(body, name) is None for name in _VERDICT_FIELDS):
        raise InvalidRequestError(
            f"thumbs: feedback needs at least one of {', '.join(_VERDICT_FIELDS)}",
            param="thumbs",
        )


async def _visible_record(keel: Services, actor: Actor, request_id: str) -> dict[str, Any]:
    record = await asyncio.to_thread(keel.database.get_record, request_id)
    if record is None:
        # Records are written in batches: the one asked about may still be queued here, or
        # in the batch being written. Waiting costs nothing when the recorder is idle.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(keel.recorder.flush(), _FLUSH_WAIT_S)
        record = await asyncio.to_thread(keel.database.get_record, request_id)
    if record is None:
        raise NotFoundError(
            f"no request record {request_id!r}: unknown, or not recorded yet (a request is "
            "recorded a moment after it finishes; try again shortly)",
            param="request_id",
        )
    if not _may_see(actor, record):
        raise PermissionDeniedError(
            f"request {request_id!r} belongs to another team; feedback is for requests you may see",
            code="request_not_visible",
        )
    return record


def _may_see(actor: Actor, record: dict[str, Any]) -> bool:
    """The rule of `GET /v1/keel/requests/{id}`: maintainers and admins see every record,
    the other roles their team's, or their own when they have no team."""
    if role_allows(actor.role, "directory.read"):
        return True
    if actor.team:
        return bool(record["team"] == actor.team)
    return bool(record["caller"] == actor.name)
