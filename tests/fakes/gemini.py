"""A fake Gemini API (generativelanguage v1beta) that speaks the real wire format.

    fake = FakeGemini()
    with serve_on_loopback(fake.app) as base_url:
        fake.reply(text_reply("Hello"))     # queue what the next request gets
        ...                                 # call the provider with api_base=base_url
        fake.last_request.body              # what the provider sent

Each request takes the next queued `Reply`, or a short default answer when none is queued. The
builders below produce bodies shaped like Gemini's: camelCase fields, `usageMetadata` on every
stream event, errors as `{"error": {"code", "message", "status"}}` with the matching HTTP status.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

MODEL_VERSION = "gemini-2.5-flash"

# google.rpc status names for the HTTP statuses Gemini answers with.
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
DEFAULT_MESSAGES = {
    400: "Request contains an invalid argument.",
    403: "The caller does not have permission",
    404: "models/unknown is not found for API version v1beta.",
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred. Please retry or report in troubleshooting guide.",
    503: "The model is overloaded. Please try again later.",
    504: "Deadline expired before operation could complete.",
}


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names lower-cased
    body: Any

    @property
    def model(self) -> str:
        return self.path.rsplit("/", 1)[-1].partition(":")[0]

    @property
    def action(self) -> str:
        """`generateContent` or `streamGenerateContent`."""
        return self.path.rpartition(":")[2]


@dataclass
class Reply:
    """One scripted answer.

    `body` is the generateContent answer, or the error body when `status` is 400 or more. A
    stream sends `events` as SSE events (`[body]` when `events` is None); `abort` then drops the
    connection instead of ending the response properly.
    """

    body: dict[str, Any] = field(default_factory=dict)
    status: int = 200
    events: list[dict[str, Any]] | None = None
    abort: bool = False


class _DroppedStream(StreamingResponse):
    """A stream whose body never ends: the server closes the connection mid-response."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
        await send(start)
        async for chunk in self.body_iterator:
            body = chunk.encode() if isinstance(chunk, str) else bytes(chunk)
            await send({"type": "http.response.body", "body": body, "more_body": True})


class FakeGemini:
    def __init__(self, api_key: str | None = "AIza-test") -> None:
        self.api_key = api_key  # None accepts any key, or none
        self.requests: list[RecordedRequest] = []
        self._replies: deque[Reply] = deque()
        self.app = Starlette(
            routes=[Route("/v1beta/models/{target}", self._handle, methods=["POST"])]
        )

    def reset(self) -> None:
        """Forget recorded requests and queued replies (for a server shared between tests)."""
        self.requests.clear()
        self._replies.clear()

    def reply(self, *replies: Reply) -> None:
        """Queue answers for the next requests, in order."""
        self._replies.extend(replies)

    @property
    def last_request(self) -> RecordedRequest:
        return self.requests[-1]

    async def _handle(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = None
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.url.path,
                query=dict(request.query_params),
                headers={name.lower(): value for name, value in request.headers.items()},
                body=body,
            )
        )
        refusal = self._check_key(request)
        if refusal is None and body is None:
            refusal = error_reply(400, "Invalid JSON payload received.")
        _, _, action = request.path_params["target"].partition(":")
        if refusal is None and action not in ("generateContent", "streamGenerateContent"):
            refusal = error_reply(404, f"Method {action!r} not found.")
        reply = refusal or (self._replies.popleft() if self._replies else text_reply("Hello!"))
        if reply.status >= 400 or action == "generateContent":
            return JSONResponse(reply.body, status_code=reply.status)
        events = reply.events if reply.events is not None else [reply.body]
        if request.query_params.get("alt") != "sse":
            return JSONResponse(events)  # without alt=sse Gemini streams one JSON array
        stream_class = _DroppedStream if reply.abort else StreamingResponse
        return stream_class(_sse(events), media_type="text/event-stream")

    def _check_key(self, request: Request) -> Reply | None:
        if self.api_key is None:
            return None
        key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
        if key is None:
            return error_reply(
                403,
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API.",
            )
        if key != self.api_key:
            reply = error_reply(400, "API key not valid. Please pass a valid API key.")
            reply.body["error"]["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }
            ]
            return reply
        return None


async def _sse(events: list[dict[str, Any]]) -> AsyncIterator[bytes]:
    for event in events:
        yield f"data: {json.dumps(event)}\r\n\r\n".encode()


# Builders -----------------------------------------------------------------------------------


def usage_metadata(
    prompt: int = 5,
    candidates: int = 3,
    *,
    thoughts: int | None = None,
    cached: int | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates + (thoughts or 0),
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    }
    if thoughts is not None:
        metadata["thoughtsTokenCount"] = thoughts
    if cached is not None:
        metadata["cachedContentTokenCount"] = cached
    return metadata


def function_call(
    name: str, args: dict[str, Any], *, signature: str | None = None
) -> dict[str, Any]:
    """A functionCall part."""
    part: dict[str, Any] = {"functionCall": {"name": name, "args": args}}
    if signature is not None:
        part["thoughtSignature"] = signature
    return part


def candidate(
    *parts: str | dict[str, Any], finish: str | None = "STOP", index: int = 0
) -> dict[str, Any]:
    """A candidate: str parts become text parts, dicts (`function_call(...)`) go as they are."""
    content_parts = [{"text": part} if isinstance(part, str) else part for part in parts]
    result: dict[str, Any] = {"content": {"parts": content_parts, "role": "model"}, "index": index}
    if finish is not None:
        result["finishReason"] = finish
    return result


def response(*candidates: dict[str, Any], usage: dict[str, Any] | None = None) -> dict[str, Any]:
    """A GenerateContentResponse: the whole answer, or one stream event."""
    return {
        "candidates": list(candidates),
        "usageMetadata": usage if usage is not None else usage_metadata(),
        "modelVersion": MODEL_VERSION,
        "responseId": "fake-response-id",
    }


def text_reply(text: str, *, finish: str = "STOP", usage: dict[str, Any] | None = None) -> Reply:
    return Reply(response(candidate(text, finish=finish), usage=usage))


def stream_reply(
    pieces: list[str],
    *,
    finish: str | None = "STOP",
    usage: dict[str, Any] | None = None,
    abort: bool = False,
) -> Reply:
    """One event per text piece; the last carries `finish` (None: a stream cut short)."""
    final_usage = usage if usage is not None else usage_metadata()
    events = []
    for number, piece in enumerate(pieces, start=1):
        last = number == len(pieces)
        # Like Gemini, every event reports usage so far; the last one the totals.
        so_far = final_usage if last else {**final_usage, "candidatesTokenCount": number}
        events.append(response(candidate(piece, finish=finish if last else None), usage=so_far))
    return Reply(events=events, abort=abort)


def blocked_reply(reason: str = "SAFETY") -> Reply:
    """The prompt itself was blocked: promptFeedback.blockReason and no candidates."""
    return Reply(
        {
            "promptFeedback": {
                "blockReason": reason,
                "safetyRatings": [
                    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}
                ],
            },
            "usageMetadata": {"promptTokenCount": 7, "totalTokenCount": 7},
            "modelVersion": MODEL_VERSION,
        }
    )


def error_reply(status: int, message: str | None = None) -> Reply:
    return Reply(
        {
            "error": {
                "code": status,
                "message": message or DEFAULT_MESSAGES.get(status, "Error."),
                "status": STATUS_NAMES.get(status, "UNKNOWN"),
            }
        },
        status=status,
    )
