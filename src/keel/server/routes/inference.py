"""The OpenAI-compatible API: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from keel.errors import KeelError, PermissionDeniedError
from keel.gateway import BodySource, Call, Gateway, Reply
from keel.identity import Actor
from keel.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from keel.server.access import authenticate_inference, current_actor, record_denial
from keel.server.body import read_body
from keel.server.errors import error_response
from keel.server.services import Services, services
from keel.server.timing import ARRIVAL_KEY

__all__ = ["models_router", "router"]

router = APIRouter(prefix="/v1", tags=["inference"])
models_router = APIRouter(prefix="/v1", tags=["inference"])

Handler = Callable[[Gateway, BodySource, Call], Awaitable[Reply]]


def _body_doc(schema: Any) -> dict[str, Any]:
    # Bodies are parsed by the gateway (one validation, OpenAI-style errors); this documents them.
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema.model_json_schema()}},
        }
    }


async def _serve(request: Request, endpoint: str, path: str, handler: Handler) -> Response:
    keel: Services = request.app.state.keel
    call = Call(
        endpoint=endpoint,
        request_headers=request.headers,
        started=request.scope.get(ARRIVAL_KEY) or time.perf_counter(),
    )
    limit = keel.settings.server.max_request_body_bytes
    try:
        try:
            call.actor = await authenticate_inference(
                keel, request, "inference", f"POST /v1/{path}"
            )
        except PermissionDeniedError as exc:
            record_denial(keel, current_actor(request), f"POST /v1/{path}", exc)
            raise
        call.caller = _cache_scope(call.actor)
        reply = await handler(keel.gateway, lambda: read_body(request, limit), call)
    except KeelError as exc:
        return error_response(exc, call.headers())
    if reply.stream is not None:
        return _GatewayStream(
            reply,
            media_type="text/event-stream",
            headers={**reply.headers, "cache-control": "no-cache", "x-accel-buffering": "no"},
        )
    return Response(
        content=orjson.dumps(reply.body), media_type="application/json", headers=reply.headers
    )


# The inference routes take the bare request (no dependency injection): they are the hot path,
# and resolving dependencies was a measurable share of it.
@router.post("/chat/completions", openapi_extra=_body_doc(ChatCompletionRequest))
async def chat_completions(request: Request) -> Response:
    return await _serve(request, "chat.completions", "chat/completions", Gateway.chat_completions)


@router.post("/completions", openapi_extra=_body_doc(CompletionRequest))
async def completions(request: Request) -> Response:
    return await _serve(request, "completions", "completions", Gateway.completions)


@router.post("/embeddings", openapi_extra=_body_doc(EmbeddingRequest))
async def embeddings(request: Request) -> Response:
    return await _serve(request, "embeddings", "embeddings", Gateway.embeddings)


class _GatewayStream(StreamingResponse):
    """Tells the gateway when the response is over, read or not (see `Reply.done`)."""

    def __init__(self, reply: Reply, **kwargs: Any) -> None:
        assert reply.stream is not None
        super().__init__(reply.stream, **kwargs)
        self._done = reply.done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self._done is not None:
                self._done()


def _cache_scope(actor: Actor) -> str | None:
    """Cached answers are shared within a team (or by one user without a team), never across;
    the open local mode has one user, so one shared scope."""
    if actor.kind == "local":
        return None
    return f"team:{actor.team}" if actor.team else f"user:{actor.name}"


@models_router.get("/models")
async def list_models(keel: Services = Depends(services)) -> dict[str, Any]:
    return {"object": "list", "data": keel.router.list_models()}


@models_router.get("/models/{model_id:path}")
async def get_model(model_id: str, keel: Services = Depends(services)) -> dict[str, Any]:
    return keel.router.describe(model_id)
