"""A fake Cohere v2 API (`POST /v2/chat`, `POST /v2/embed`) that speaks Cohere's wire format.

It records every request (path, headers, JSON body) and answers from a script: queue `Reply`
objects (or use the `reply_*` helpers) and each request takes the next one; with the queue empty
it answers a short text. One `Reply` renders either as a JSON body or, when the request sets
`stream: true`, as Cohere's SSE event sequence:

    message-start, [tool-plan-delta...], [content-start, content-delta..., content-end],
    [tool-call-start, tool-call-delta..., tool-call-end]..., message-end

Errors come back as Cohere sends them: the status and a `{"id": ..., "message": ...}` body.
Serve it with `tests.fakes.server.serve_on_loopback(fake.app)`.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["FakeCohere", "FakeToolCall", "RecordedRequest", "Reply"]


@dataclass
class FakeToolCall:
    name: str
    arguments: str  # JSON text; streamed in small fragments
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:12]}")


@dataclass
class Reply:
    """One scripted answer to the next request."""

    text: str = ""
    tool_plan: str = ""
    tool_calls: list[FakeToolCall] = field(default_factory=list)
    finish_reason: str = "COMPLETE"
    tokens: tuple[int, int] | None = (21, 7)  # usage.tokens (input, output); None leaves it out
    billed: tuple[int, int] | None = (12, 7)  # usage.billed_units (input, output)
    error: str = ""  # with status >= 400: the error message; with finish ERROR: delta.error
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    cut_after: int | None = None  # stream only: send this many events, never message-end
    abort: bool = False  # with cut_after: drop the connection instead of ending the body
    embeddings: list[list[float]] | None = None  # embed only; default: derived from the texts


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class _DropConnection(Exception):
    """Raised inside a streaming body so the server closes the socket mid-response."""


class FakeCohere:
    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key  # None accepts any bearer token
        self.requests: list[RecordedRequest] = []
        self.replies: list[Reply] = []
        self.app = Starlette(
            routes=[
                Route("/v2/chat", self._chat, methods=["POST"]),
                Route("/v2/embed", self._embed, methods=["POST"]),
            ]
        )

    # --- scripting ---------------------------------------------------------------------------

    def reply(self, reply: Reply) -> Reply:
        self.replies.append(reply)
        return reply

    def reply_text(self, text: str, **options: Any) -> Reply:
        return self.reply(Reply(text=text, **options))

    def reply_tool_calls(self, *calls: FakeToolCall, tool_plan: str = "", **options: Any) -> Reply:
        options.setdefault("finish_reason", "TOOL_CALL")
        return self.reply(Reply(tool_calls=list(calls), tool_plan=tool_plan, **options))

    def reply_error(
        self, status: int, message: str, headers: dict[str, str] | None = None
    ) -> Reply:
        return self.reply(Reply(status=status, error=message, headers=headers or {}))

    def reply_cut(self, text: str, *, after_events: int, abort: bool = False) -> Reply:
        return self.reply(Reply(text=text, cut_after=after_events, abort=abort))

    def reply_embeddings(self, vectors: list[list[float]]) -> Reply:
        return self.reply(Reply(embeddings=vectors))

    @property
    def last(self) -> RecordedRequest:
        return self.requests[-1]

    def reset(self) -> None:
        self.requests.clear()
        self.replies.clear()

    # --- HTTP ---------------------------------------------------------------------------------

    async def _receive(self, request: Request) -> tuple[dict[str, Any], Reply | Response]:
        body = json.loads(await request.body())
        self.requests.append(RecordedRequest(request.url.path, dict(request.headers), body))
        authorization = request.headers.get("authorization", "")
        if not authorization.startswith("Bearer "):
            return body, _error(401, "no api key supplied")
        if self.api_key is not None and authorization != f"Bearer {self.api_key}":
            return body, _error(401, "invalid api token")
        reply = self.replies.pop(0) if self.replies else Reply(text="Hello from fake Cohere.")
        if reply.status >= 400:
            return body, _error(reply.status, reply.error, reply.headers)
        return body, reply

    async def _chat(self, request: Request) -> Response:
        body, reply = await self._receive(request)
        if isinstance(reply, Response):
            return reply
        if body.get("stream"):
            return StreamingResponse(_sse(reply), media_type="text/event-stream")
        return JSONResponse(_chat_body(reply))

    async def _embed(self, request: Request) -> Response:
        body, reply = await self._receive(request)
        if isinstance(reply, Response):
            return reply
        texts: list[str] = body["texts"]
        vectors = reply.embeddings or [
            [float(len(text)), float(index), 0.5] for index, text in enumerate(texts)
        ]
        return JSONResponse(
            {
                "id": str(uuid.uuid4()),
                "texts": texts,
                "embeddings": {"float": vectors},
                "meta": {
                    "api_version": {"version": "2"},
                    "billed_units": {"input_tokens": sum(len(t.split()) for t in texts)},
                },
                "response_type": "embeddings_by_type",
            }
        )


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"id": str(uuid.uuid4()), "message": message}, status, headers=headers)


def _usage(reply: Reply) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if reply.billed is not None:
        result["billed_units"] = {"input_tokens": reply.billed[0], "output_tokens": reply.billed[1]}
    if reply.tokens is not None:
        result["tokens"] = {"input_tokens": reply.tokens[0], "output_tokens": reply.tokens[1]}
    return result


def _wire_tool_call(call: FakeToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def _chat_body(reply: Reply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant"}
    if reply.text:
        message["content"] = [{"type": "text", "text": reply.text}]
    if reply.tool_calls:
        message["tool_plan"] = reply.tool_plan
        message["tool_calls"] = [_wire_tool_call(call) for call in reply.tool_calls]
    return {
        "id": str(uuid.uuid4()),
        "finish_reason": reply.finish_reason,
        "message": message,
        "usage": _usage(reply),
    }


def _events(reply: Reply) -> list[dict[str, Any]]:
    """Cohere's event sequence for a reply, message-end included."""
    events: list[dict[str, Any]] = [
        {
            "id": str(uuid.uuid4()),
            "type": "message-start",
            "delta": {
                "message": {
                    "role": "assistant",
                    "content": [],
                    "tool_plan": "",
                    "tool_calls": [],
                    "citations": [],
                }
            },
        }
    ]
    for piece in re.findall(r"\s*\S+", reply.tool_plan):
        events.append({"type": "tool-plan-delta", "delta": {"message": {"tool_plan": piece}}})
    block = 0  # content blocks and tool calls share one index sequence
    if reply.text:
        content_start = {"content": {"type": "text", "text": ""}}
        events.append(
            {"type": "content-start", "index": block, "delta": {"message": content_start}}
        )
        for piece in re.findall(r"\s*\S+", reply.text):
            content = {"content": {"text": piece}}
            events.append({"type": "content-delta", "index": block, "delta": {"message": content}})
        events.append({"type": "content-end", "index": block})
        block += 1
    for call in reply.tool_calls:
        start = {
            "tool_calls": {
                **_wire_tool_call(call),
                "function": {"name": call.name, "arguments": ""},
            }
        }
        events.append({"type": "tool-call-start", "index": block, "delta": {"message": start}})
        for offset in range(0, len(call.arguments), 8):
            fragment = {
                "tool_calls": {"function": {"arguments": call.arguments[offset : offset + 8]}}
            }
            events.append(
                {"type": "tool-call-delta", "index": block, "delta": {"message": fragment}}
            )
        events.append({"type": "tool-call-end", "index": block})
        block += 1
    end: dict[str, Any] = {"finish_reason": reply.finish_reason, "usage": _usage(reply)}
    if reply.error:
        end["error"] = reply.error
    events.append({"type": "message-end", "delta": end})
    return events


async def _sse(reply: Reply) -> AsyncIterator[bytes]:
    events = _events(reply)
    if reply.cut_after is not None:
        events = events[: min(reply.cut_after, len(events) - 1)]
    for event in events:
        yield f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
    if reply.abort:
        raise _DropConnection("fake Cohere dropped the connection mid-stream")
