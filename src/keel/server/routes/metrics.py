"""`GET /metrics`: this replica's Prometheus metrics.

It authorizes itself instead of through the app's router-level dependency: with
`metrics.public: true` an operator lets a scraper on a private network in without a key, and
the permission check is skipped; otherwise it is the matrix's `metrics.read` like any route.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from keel.errors import NotFoundError
from keel.server.access import authorized
from keel.server.openapi import Responses, error_responses
from keel.server.services import Services

__all__ = ["router"]

router = APIRouter(tags=["monitoring"])

_EXPOSITION: dict[str, Any] = {"schema": {"type": "string"}}
_METRICS: Responses = {
    200: {
        "description": "The Prometheus text format (0.0.4), or OpenMetrics 1.0 when the "
        "`Accept` header asks for `application/openmetrics-text`.",
        "content": {
            "text/plain": _EXPOSITION,
            "application/openmetrics-text": _EXPOSITION,
        },
    },
    **error_responses(401, 403, 404, 500),
}


@router.get("/metrics", response_class=Response, responses=_METRICS)
async def metrics(request: Request) -> Response:
    keel: Services = request.app.state.keel
    if not keel.settings.metrics.public:
        await authorized(request)
    if keel.metrics is None:
        raise NotFoundError("metrics are off on this server (metrics.enabled: false)")
    # On the event loop, not a worker thread: the collectors read routing state that only the
    # loop touches. A scrape takes a millisecond or two.
    body, content_type = keel.metrics.exposition(request.headers.get("accept"))
    return Response(content=body, headers={"content-type": content_type})
