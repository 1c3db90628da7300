"""A fake OpenAI-compatible server (the wire format of OpenAI, vLLM, Ollama, Azure OpenAI, ...).

Routes: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models, and Azure's
/openai/deployments/{deployment}/... (with `api-version`) and /openai/v1/... forms.

By default a chat answers "Echo: <last user message>" and counts one token per word. Tests
script it with `fake.then(...)`: an `ErrorReply` (status + OpenAI error body, optional
retry-after), `Hang` (sleep past the client's timeout), `CutStream` (send k chunks then drop the
connection), `StreamError` (send k chunks then an `{"error": ...}` event), `RawStream` (a 200
event stream with exactly the given body), `Malformed` (a 200 whose body is not JSON), or `Reply`
(exact content / tool calls / usage / extra message fields), or `Reset` (start a response, then
drop the connection before its body is complete). Every request is recorded in `fake.requests`.

Several deployments can sit behind one fake, each under its own upstream model name; per model,
`fake.faults[model] = ErrorReply(...)` (or any scripted reply) answers every request for that
model until removed, and `fake.delays[model] = seconds` delays each of its answers. A model with a
fault set does not consume the shared `then(...)` script. `fake.count(model)` counts the requests
that reached the fake for a model.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class RecordedRequest:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any]
    received_at: float = field(default_factory=time.monotonic)


@dataclass
class Reply:
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str = "stop"
    usage: dict[str, Any] | None = None
    # Extra message fields (vLLM's and DeepSeek's `reasoning_content`, say); streamed as one delta.
    message_extra: dict[str, Any] | None = None


@dataclass
class ErrorReply:
    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    retry_after: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Hang:
    seconds: float


@dataclass
class CutStream:
    after_chunks: int


@dataclass
class StreamError:
    """Stream `after_chunks` chunks, then an `{"error": ...}` event (as OpenAI and vLLM do)."""

    after_chunks: int
    message: str = "The server had an error while processing your request."
    type: str = "server_error"
    hold_open_s: float = 0.0  # how long to keep the connection open after the error event


@dataclass
class RawStream:
    """A 200 `text/event-stream` response whose body is exactly `body`."""

    body: bytes


@dataclass
class Malformed:
    body: bytes = b"{not json"


@dataclass
class Reset:
    """Send the status line and headers (announcing a body), then drop the connection."""

    sent_bytes: int = 0  # how much of the announced body goes out before the drop


Scripted = Reply | ErrorReply | Hang | CutStream | StreamError | RawStream | Malformed | Reset


class _DroppedConnection(Response):
    """A raw ASGI response that promises a body and dies before delivering it: the server closes
    the connection and the client sees a disconnect or an incomplete payload."""

    def __init__(self, sent_bytes: int) -> None:
        super().__init__()
        self.sent_bytes = sent_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(self.sent_bytes + 1000).encode()),
                ],
            }
        )
        if self.sent_bytes:
            await send(
                {"type": "http.response.body", "body": b"{" * self.sent_bytes, "more_body": True}
            )
        raise ConnectionResetError("fake upstream reset the connection")


class _WithHeaders:
    """Adds the fake's `response_headers` to every response that doesn't set them itself."""

    def __init__(self, app: Starlette, fake: FakeOpenAI) -> None:
        self.app = app
        self.fake = fake

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [
                    (name.encode(), value.encode())
                    for name, value in self.fake.response_headers.items()
                    if name.encode() not in present
                ]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, sending)


@dataclass
class FakeOpenAI:
    requests: list[RecordedRequest] = field(default_factory=list)
    script: deque[Scripted] = field(default_factory=deque)
    # Persistent behaviour per upstream model name (the request body's `model`).
    faults: dict[str, Scripted] = field(default_factory=dict)
    delays: dict[str, float] = field(default_factory=dict)
    # Sent with every response, as OpenAI sends its request id and rate-limit state.
    response_headers: dict[str, str] = field(
        default_factory=lambda: {
            "x-request-id": "req_fake_upstream",
            "x-ratelimit-limit-requests": "10000",
            "x-ratelimit-remaining-requests": "9999",
            "openai-processing-ms": "7",
        }
    )

    def then(self, *replies: Scripted) -> FakeOpenAI:
        self.script.extend(replies)
        return self

    def reset(self) -> None:
        self.requests.clear()
        self.script.clear()
        self.faults.clear()
        self.delays.clear()

    def count(self, model: str | None = None) -> int:
        """Requests received for upstream `model` (all requests when None)."""
        if model is None:
            return len(self.requests)
        return sum(1 for request in list(self.requests) if request.body.get("model") == model)

    @property
    def last(self) -> RecordedRequest:
        return self.requests[-1]

    def app(self) -> Any:
        routes = [
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/completions", self._completions, methods=["POST"]),
            Route("/v1/embeddings", self._embeddings, methods=["POST"]),
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/openai/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/openai/v1/completions", self._completions, methods=["POST"]),
            Route("/openai/v1/embeddings", self._embeddings, methods=["POST"]),
            Route(
                "/openai/deployments/{deployment}/chat/completions", self._chat, methods=["POST"]
            ),
            Route(
                "/openai/deployments/{deployment}/completions",
                self._completions,
                methods=["POST"],
            ),
            Route(
                "/openai/deployments/{deployment}/embeddings", self._embeddings, methods=["POST"]
            ),
        ]
        return _WithHeaders(Starlette(routes=routes), self)

    async def _record(self, request: Request) -> dict[str, Any]:
        body = json.loads(await request.body())
        self.requests.append(
            RecordedRequest(
                path=request.url.path,
                query=dict(request.query_params),
                headers=dict(request.headers),
                body=body,
            )
        )
        return body

    async def _scripted(self, body: dict[str, Any]) -> Response | Scripted | None:
        model = body.get("model")
        delay = self.delays.get(model) if isinstance(model, str) else None
        if delay:
            await asyncio.sleep(delay)
        fault = self.faults.get(model) if isinstance(model, str) else None
        if fault is not None:
            scripted: Scripted = fault
        elif self.script:
            scripted = self.script.popleft()
        else:
            return None
        if isinstance(scripted, Reset):
            return _DroppedConnection(scripted.sent_bytes)
        if isinstance(scripted, ErrorReply):
            headers = {"retry-after": scripted.retry_after} if scripted.retry_after else {}
            headers.update(scripted.headers)
            error = {
                "message": scripted.message,
                "type": scripted.type,
                "param": scripted.param,
                "code": scripted.code,
            }
            return JSONResponse({"error": error}, status_code=scripted.status, headers=headers)
        if isinstance(scripted, Hang):
            await asyncio.sleep(scripted.seconds)
            return None
        if isinstance(scripted, Malformed):
            return Response(scripted.body, media_type="application/json")
        if isinstance(scripted, RawStream):
            return Response(scripted.body, media_type="text/event-stream")
        return scripted

    async def _chat(self, request: Request) -> Response:
        body = await self._record(request)
        stream = bool(body.get("stream"))
        scripted = await self._scripted(body)
        if isinstance(scripted, Response):
            return scripted
        reply = scripted if isinstance(scripted, Reply) else None
        cut = scripted.after_chunks if isinstance(scripted, CutStream | StreamError) else None
        error, hold_open_s = None, 0.0
        if isinstance(scripted, StreamError):
            error = {"message": scripted.message, "type": scripted.type, "param": None}
            hold_open_s = scripted.hold_open_s
        if reply is None:
            reply = Reply(content=f"Echo: {_last_user_text(body)}")
        usage = reply.usage or _usage(body, reply.content or "")
        model = body.get("model", "gpt-4o-mini")
        if stream:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            events = _chat_events(model, reply, usage if include_usage else None)
            return StreamingResponse(
                _sse(events, cut, error, hold_open_s), media_type="text/event-stream"
            )
        message: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.tool_calls:
            message["tool_calls"] = reply.tool_calls
        message.update(reply.message_extra or {})
        return JSONResponse(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": reply.finish_reason,
                    }
                ],
                "usage": usage,
                "system_fingerprint": "fp_fake",
            }
        )

    async def _completions(self, request: Request) -> Response:
        body = await self._record(request)
        scripted = await self._scripted(body)
        if isinstance(scripted, Response):
            return scripted
        prompt = body.get("prompt", "")
        text = f" completed: {prompt}"
        usage = _usage_counts(len(str(prompt).split()), len(text.split()))
        if body.get("stream"):
            chunks = [
                {
                    "id": "cmpl-fake",
                    "object": "text_completion",
                    "created": 1,
                    "model": body.get("model"),
                    "choices": [
                        {"index": 0, "text": word + " ", "logprobs": None, "finish_reason": None}
                    ],
                }
                for word in text.split()
            ]
            if (body.get("stream_options") or {}).get("include_usage"):
                chunks.append(
                    {
                        "id": "cmpl-fake",
                        "object": "text_completion",
                        "created": 1,
                        "model": body.get("model"),
                        "choices": [],
                        "usage": usage,
                    }
                )
            return StreamingResponse(_sse(chunks, None), media_type="text/event-stream")
        return JSONResponse(
            {
                "id": "cmpl-fake",
                "object": "text_completion",
                "created": 1,
                "model": body.get("model"),
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
                "usage": usage,
            }
        )

    async def _embeddings(self, request: Request) -> Response:
        body = await self._record(request)
        scripted = await self._scripted(body)
        if isinstance(scripted, Response):
            return scripted
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [
            {"object": "embedding", "index": index, "embedding": [0.1 * (index + 1), 0.2, 0.3]}
            for index, _ in enumerate(inputs)
        ]
        tokens = sum(len(str(item).split()) for item in inputs)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": body.get("model"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]})


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return "".join(part.get("text", "") for part in content)
            return str(content or "")
    return ""


def _usage_counts(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _usage(body: dict[str, Any], content: str) -> dict[str, Any]:
    prompt = sum(len(str(m.get("content") or "").split()) for m in body.get("messages", []))
    return _usage_counts(prompt, len(content.split()))


def _chat_events(model: str, reply: Reply, usage: dict[str, Any] | None) -> list[dict[str, Any]]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    events = [chunk({"role": "assistant", "content": ""})]
    if reply.message_extra:
        events.append(chunk(dict(reply.message_extra)))
    for word in (reply.content or "").split(" "):
        if word:
            events.append(chunk({"content": word + " "}))
    for index, call in enumerate(reply.tool_calls or []):
        events.append(chunk({"tool_calls": [{"index": index, **call}]}))
    events.append(chunk({}, reply.finish_reason))
    if usage is not None:
        final = chunk({})
        final["choices"] = []
        final["usage"] = usage
        events.append(final)
    return events


async def _sse(
    events: list[dict[str, Any]],
    cut_after: int | None,
    error: dict[str, Any] | None = None,
    hold_open_s: float = 0.0,
) -> AsyncIterator[bytes]:
    for sent, event in enumerate(events):
        if cut_after is not None and sent >= cut_after and error is not None:
            # An upstream that fails mid-answer reports it in-band, then ends the stream.
            yield f"data: {json.dumps({'error': error})}\n\n".encode()
            await asyncio.sleep(hold_open_s)
            break
        if cut_after is not None and sent >= cut_after:
            # Ending the body without [DONE] is what a dropped upstream connection looks like.
            # The drop comes a moment after the last chunk, as a real one does: an HTTP client
            # may report a reset before it hands out data that arrived with it.
            await asyncio.sleep(0.1)
            raise ConnectionResetError("fake upstream cut the stream")
        yield f"data: {json.dumps(event)}\n\n".encode()
    yield b"data: [DONE]\n\n"
