"""A fake Anthropic Messages API (`POST /v1/messages`) as a Starlette app, for provider tests.

It speaks the real wire format: a `message` JSON body, or for `"stream": true` the SSE sequence
message_start, ping, content_block_start / content_block_delta... / content_block_stop per block,
message_delta, message_stop; errors as `{"type": "error", "error": {"type", "message"}}` with
Anthropic's statuses (529 for overloaded). Like the real API it checks `x-api-key`, requires
`anthropic-version`, `model`, `max_tokens` and `messages`.

Tests script it: `fake.then(reply, ...)` queues what the next requests get — a `Reply` (rendered
as JSON or as a stream, matching the request) or an `ErrorReply`; with nothing queued it answers
"Hello!". Every request is recorded in `fake.requests`.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MODEL = "claude-sonnet-4-5-20250929"
MESSAGE_ID = "msg_01XFDUDYJgAACzvnptvVoYEL"

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
STATUSES = {kind: status for status, kind in ERROR_TYPES.items()}


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Reply:
    """A successful answer: Anthropic content blocks plus how the message ended."""

    content: list[dict[str, Any]]
    stop_reason: str = "end_turn"
    stop_sequence: str | None = None
    usage: dict[str, int] = field(default_factory=lambda: {"input_tokens": 12, "output_tokens": 6})
    # Streams only: after the first content delta, send an `error` event of this type and stop
    # (what Anthropic does when it overloads mid-answer); a JSON request gets that error's status.
    stream_error: str | None = None
    # Streams only: close the connection after the first content delta, with no error event.
    cut_stream: bool = False


@dataclass
class ErrorReply:
    status: int
    message: str
    type: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.type = self.type or ERROR_TYPES.get(self.status, "api_error")


def text_reply(text: str, **kwargs: Any) -> Reply:
    return Reply(content=[{"type": "text", "text": text}], **kwargs)


def tool_use_reply(
    name: str,
    tool_input: dict[str, Any],
    *,
    tool_id: str = "toolu_01A09q90qw90lq917835lq9",
    text: str | None = None,
    **kwargs: Any,
) -> Reply:
    content = [{"type": "text", "text": text}] if text else []
    content.append({"type": "tool_use", "id": tool_id, "name": name, "input": tool_input})
    kwargs.setdefault("stop_reason", "tool_use")
    return Reply(content=content, **kwargs)


def error_reply(status: int, message: str = "", *, retry_after: str | None = None) -> ErrorReply:
    headers = {"retry-after": retry_after} if retry_after else {}
    return ErrorReply(status, message or f"fake error {status}", headers=headers)


class FakeAnthropic:
    def __init__(self, api_key: str = "sk-ant-test") -> None:
        self.api_key = api_key
        self.url = ""  # set by whoever serves the app
        self.requests: list[RecordedRequest] = []
        self.replies: deque[Reply | ErrorReply] = deque()
        self.app = Starlette(routes=[Route("/v1/messages", self._messages, methods=["POST"])])

    def then(self, *replies: Reply | ErrorReply) -> None:
        self.replies.extend(replies)

    def reset(self) -> None:
        """Forget recorded requests and queued replies, so one server can serve many tests."""
        self.requests.clear()
        self.replies.clear()

    @property
    def last(self) -> RecordedRequest:
        return self.requests[-1]

    async def _messages(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except json.JSONDecodeError:
            return _error(ErrorReply(400, "There was an issue with the request body JSON"))
        self.requests.append(RecordedRequest(request.url.path, dict(request.headers), body))
        if request.headers.get("x-api-key") != self.api_key:
            return _error(ErrorReply(401, "invalid x-api-key"))
        if "anthropic-version" not in request.headers:
            return _error(ErrorReply(400, "anthropic-version: header is required"))
        if problem := _invalid(body):
            return _error(ErrorReply(400, problem))
        reply = self.replies.popleft() if self.replies else text_reply("Hello!")
        if isinstance(reply, ErrorReply):
            return _error(reply)
        if body.get("stream"):
            return StreamingResponse(_events(reply), media_type="text/event-stream")
        if reply.stream_error:
            status = STATUSES.get(reply.stream_error, 500)
            return _error(ErrorReply(status, f"fake {reply.stream_error}", reply.stream_error))
        return JSONResponse(_message(reply, reply.content, reply.stop_reason, reply.usage))


def _invalid(body: dict[str, Any]) -> str | None:
    """The 400 message the real API gives for the mistakes a translation could make."""
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            return f"{name}: Field required"
    roles = [message["role"] for message in body["messages"]]
    if any(role not in ("user", "assistant") for role in roles):
        return "messages: roles must be 'user' or 'assistant'"
    if any(first == second for first, second in pairwise(roles)):
        return "messages: roles must alternate between 'user' and 'assistant'"
    for message in body["messages"]:
        content = message["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not blocks or any(b["type"] == "text" and not b["text"] for b in blocks):
            return "messages: text content blocks must be non-empty"
    return None


def _message(
    reply: Reply, content: list[dict[str, Any]], stop_reason: str | None, usage: dict[str, int]
) -> dict[str, Any]:
    return {
        "id": MESSAGE_ID,
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": reply.stop_sequence if stop_reason else None,
        "usage": usage,
    }


def _error(reply: ErrorReply) -> JSONResponse:
    body = {
        "type": "error",
        "error": {"type": reply.type, "message": reply.message},
        "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
    }
    return JSONResponse(body, status_code=reply.status, headers=reply.headers)


def _sse(data: dict[str, Any]) -> str:
    return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n"


async def _events(reply: Reply) -> AsyncIterator[str]:
    # message_start carries input usage and a provisional output count; the final output count
    # arrives in message_delta.
    start_usage = {**reply.usage, "output_tokens": 1}
    yield _sse({"type": "message_start", "message": _message(reply, [], None, start_usage)})
    yield _sse({"type": "ping"})
    for index, block in enumerate(reply.content):
        start, deltas = _stream_block(block)
        yield _sse({"type": "content_block_start", "index": index, "content_block": start})
        for delta in deltas:
            yield _sse({"type": "content_block_delta", "index": index, "delta": delta})
            if reply.cut_stream:
                return
            if reply.stream_error:
                error = {"type": reply.stream_error, "message": "Overloaded"}
                yield _sse({"type": "error", "error": error})
                return
        yield _sse({"type": "content_block_stop", "index": index})
    delta = {"stop_reason": reply.stop_reason, "stop_sequence": reply.stop_sequence}
    final_usage = {"output_tokens": reply.usage.get("output_tokens", 0)}
    yield _sse({"type": "message_delta", "delta": delta, "usage": final_usage})
    yield _sse({"type": "message_stop"})


def _pieces(text: str, size: int = 5) -> list[str]:
    return [text[start : start + size] for start in range(0, len(text), size)] or [""]


def _stream_block(block: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A content block as its content_block_start payload and the deltas that fill it in."""
    kind = block["type"]
    if kind == "text":
        return {"type": "text", "text": ""}, [
            {"type": "text_delta", "text": piece} for piece in _pieces(block["text"])
        ]
    if kind == "tool_use":
        start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
        # The real API opens every tool input with an empty fragment.
        fragments = ["", *_pieces(json.dumps(block["input"]), size=7)]
        return start, [{"type": "input_json_delta", "partial_json": part} for part in fragments]
    if kind == "thinking":
        deltas = [
            {"type": "thinking_delta", "thinking": piece} for piece in _pieces(block["thinking"])
        ]
        deltas.append(
            {"type": "signature_delta", "signature": block.get("signature", "EqQBCgIYAh")}
        )
        return {"type": "thinking", "thinking": "", "signature": ""}, deltas
    raise ValueError(f"the fake cannot stream {kind!r} blocks")
