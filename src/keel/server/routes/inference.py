"""The OpenAI-compatible API: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from keel.errors import KeelError, PermissionDeniedError
from keel.gateway import BodySource, Call, Gateway, Reply
from keel.gateway.call import CLIENT_CLOSED_REQUEST
from keel.identity import Actor
from keel.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from keel.server.access import authenticate_inference, current_actor, record_denial
from keel.server.body import read_body
from keel.server.errors import error_response
from keel.server.openapi import Responses, error_responses, json_body
from keel.server.services import Services, services
from keel.server.timing import ARRIVAL_KEY

__all__ = ["models_router", "router"]

router = APIRouter(prefix="/v1", tags=["inference"])
models_router = APIRouter(prefix="/v1", tags=["inference"])

Handler = Callable[[Gateway, BodySource, Call], Coroutine[Any, Any, Reply]]


# Bodies are parsed by the gateway (one validation, OpenAI-style errors); `json_body` documents
# them. Every status the gateway can answer with, its own and the client errors it relays from
# providers (a 409 or 422, say) as they came:
_INFERENCE_ERRORS = error_responses(400, 401, 403, 404, 413, 415, 429, 500, 502, 503, 504, "4XX")
# One server-sent event: `data` is a chunk's JSON, or `[DONE]` at the end.
_SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "data": {"type": "string"},
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
    "required": ["data"],
}
_STREAMED: Responses = {
    200: {
        "description": "The answer; with `stream: true`, server-sent events ending in "
        "`data: [DONE]`.",
        "content": {"text/event-stream": {"schema": _SSE_EVENT}},
    },
    **_INFERENCE_ERRORS,
}
_MODELS_ERRORS = error_responses(401, 403, 500)


async def _serve(request: Request, endpoint: str, path: str, handler: Handler) -> Response:
    keel: Services = request.app.state.keel
    call = Call(
        endpoint=endpoint,
        request_headers=request.headers,
        started=request.scope.get(ARRIVAL_KEY) or time.perf_counter(),
    )
    limit = keel.settings.server.max_request_body_bytes
    watch = _DisconnectWatch(request)
    metrics = keel.metrics
    try:
        try:
            call.actor = await authenticate_inference(
                keel, request, "inference", f"POST /v1/{path}"
            )
        except PermissionDeniedError as exc:
            record_denial(keel, current_actor(request), f"POST /v1/{path}", exc)
            raise
        call.caller = _cache_scope(call.actor)
        if metrics is not None:
            # Every call counted here is finished exactly once by the gateway (its observer).
            metrics.call_started()
        reply = await watch.run(handler(keel.gateway, watch.reading(limit), call))
    except KeelError as exc:
        return error_response(exc, call.headers())
    if reply is None:
        # The client left before the answer: nobody reads this, the record says 499.
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    if reply.stream is not None:
        return _GatewayStream(
            reply,
            sent=None if metrics is None else partial(metrics.observe_response_size, call),
            media_type="text/event-stream",
            headers={**reply.headers, "cache-control": "no-cache", "x-accel-buffering": "no"},
        )
    content = orjson.dumps(reply.body)
    if metrics is not None:
        metrics.observe_response_size(call, len(content))
    return Response(content=content, media_type="application/json", headers=reply.headers)


class _DisconnectWatch:
    """Stops the work of a client that went away before its answer began.

    Once the body is read, the only message the server can still deliver is the disconnect, so
    a task waits for it and cancels the request's own task: the call's attempts and retries stop
    where they are, and the gateway records the call as 499. A stream's watch ends with its
    first chunk, where the streaming response takes over listening.
    """

    __slots__ = ("_disconnected", "_request", "_watcher")

    def __init__(self, request: Request) -> None:
        self._request = request
        self._watcher: asyncio.Task[None] | None = None
        self._disconnected = False

    def reading(self, limit: int) -> BodySource:
        async def body() -> bytes:
            data = await read_body(self._request, limit)
            work = asyncio.current_task()
            if work is not None:
                self._watcher = asyncio.get_running_loop().create_task(self._watch(work))
            return data

        return body

    async def _watch(self, work: asyncio.Task[Any]) -> None:
        while (await self._request.receive())["type"] != "http.disconnect":
            pass
        self._disconnected = True
        work.cancel()

    async def run(self, work: Awaitable[Reply]) -> Reply | None:
        try:
            return await work
        except asyncio.CancelledError:
            this = asyncio.current_task()
            # Ours alone: a server shutting down cancels too, and that must go on.
            if self._disconnected and this is not None and this.cancelling() == 1:
                this.uncancel()
                return None
            raise
        finally:
            # Nothing awaits between the work's end and here, so the watcher cannot have
            # cancelled a request that already has its answer.
            if self._watcher is not None:
                self._watcher.cancel()


# The inference routes take the bare request (no dependency injection): they are the hot path,
# and resolving dependencies was a measurable share of it.
@router.post(
    "/chat/completions", openapi_extra=json_body(ChatCompletionRequest), responses=_STREAMED
)
async def chat_completions(request: Request) -> Response:
    return await _serve(request, "chat.completions", "chat/completions", Gateway.chat_completions)


@router.post("/completions", openapi_extra=json_body(CompletionRequest), responses=_STREAMED)
async def completions(request: Request) -> Response:
    return await _serve(request, "completions", "completions", Gateway.completions)


@router.post("/embeddings", openapi_extra=json_body(EmbeddingRequest), responses=_INFERENCE_ERRORS)
async def embeddings(request: Request) -> Response:
    return await _serve(request, "embeddings", "embeddings", Gateway.embeddings)


class _GatewayStream(StreamingResponse):
    """Tells the gateway when the response is over, read or not (see `Reply.done`)."""

    def __init__(
        self, reply: Reply, *, sent: Callable[[int], None] | None = None, **kwargs: Any
    ) -> None:
        assert reply.stream is not None
        super().__init__(reply.stream, **kwargs)
        self._done = reply.done
        self._sent = sent  # told the bytes of body sent, once the response is over

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        size = 0

        async def counted(message: Message) -> None:
            nonlocal size
            if message["type"] == "http.response.body":
                size += len(message.get("body", b""))
            await send(message)

        try:
            await super().__call__(scope, receive, send if self._sent is None else counted)
        finally:
            if self._done is not None:
                self._done()
            if self._sent is not None:
                self._sent(size)


def _cache_scope(actor: Actor) -> str | None:
    """Cached answers are shared within a team (or by one user without a team), never across;
    the open local mode has one user, so one shared scope."""
    if actor.kind == "local":
        return None
    return f"team:{actor.team}" if actor.team else f"user:{actor.name}"


@models_router.get("/models", responses=_MODELS_ERRORS)
async def list_models(keel: Services = Depends(services)) -> dict[str, Any]:
    return {"object": "list", "data": keel.router.list_models()}


@models_router.get("/models/{model_id:path}", responses={**_MODELS_ERRORS, **error_responses(404)})
async def get_model(model_id: str, keel: Services = Depends(services)) -> dict[str, Any]:
    return keel.router.describe(model_id)
