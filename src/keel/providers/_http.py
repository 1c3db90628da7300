"""HTTP plumbing shared by the remote providers: JSON calls, SSE streams, and error translation.

Vendor and transport errors are translated here, at the seam, into Keel's error tree; provider
modules only say how to find the message in their error bodies.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from keel import secrets
from keel.errors import (
    ContextWindowExceededError,
    InvalidRequestError,
    KeelError,
    NotFoundError,
    RateLimitError,
    RequestTooLargeError,
    UpstreamAuthError,
    UpstreamBadResponseError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from keel.providers.exchange import OPENAI_FORWARDED_HEADERS, forwarded_headers, note_response

__all__ = [
    "ErrorMessageFinder",
    "SSEEvent",
    "credentials_in",
    "error_for_status",
    "post_json",
    "stream_sse",
]

ErrorMessageFinder = Callable[[Any], str | None]

_CONTEXT_WINDOW_HINTS = (
    "context length",
    "context_length",
    "context window",
    "maximum context",
    "prompt is too long",
    "too many tokens",
    "input token count",
)
_CONTENT_POLICY_HINTS = (
    "content_policy",
    "content policy",
    "content management policy",
    "safety",
    "content_filter",
)
_CONTENT_POLICY_CODES = frozenset({"content_policy_violation", "content_filter"})
# Headers the HTTP layer itself sets, and the client headers forwarded on a caller's behalf:
# never credentials of Keel's.
_PUBLIC_HEADERS = frozenset({"content-type", "accept", *OPENAI_FORWARDED_HEADERS})


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str
    data: str


def default_error_message(body: Any) -> str | None:
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if isinstance(body.get("message"), str):
            return str(body["message"])
    return None


def error_for_status(
    provider: str,
    status: int,
    raw_body: bytes,
    *,
    find_message: ErrorMessageFinder = default_error_message,
    retry_after: str | None = None,
    credentials: Sequence[str] = (),
    relay_fields: bool = False,
    headers: dict[str, str] | None = None,
) -> KeelError:
    """The Keel error for an upstream HTTP error response, with `credentials` blanked out.

    An error the caller caused (a 4xx other than 401/403/408/429) keeps the upstream's status
    and message; with `relay_fields` (OpenAI-format upstreams) also its type, code and param,
    so a client sees what it would have seen calling the upstream directly. Failures of the
    upstream itself become Keel's upstream errors, which routing retries and counts.
    """
    try:
        body: Any = orjson.loads(raw_body) if raw_body else None
    except orjson.JSONDecodeError:
        body = None
    detail = find_message(body) if body is not None else None
    if detail is None:
        detail = raw_body.decode("utf-8", "replace").strip() or "no error body"
    # Some servers repeat what they were sent. Blanked before the cut, so that no part of a
    # secret survives at the edge of it.
    secrets.register(credentials)
    detail = secrets.redact(detail)[:1000]
    message = f"{provider} returned HTTP {status}: {detail}"
    lowered = detail.lower()
    relayed = dict(headers or {})
    if retry_after:
        relayed["retry-after"] = retry_after
    fields = _openai_error_fields(body) if relay_fields else {}
    code = fields.get("code")
    if status in (400, 422) and (
        code == "context_length_exceeded"
        or (code is None and any(hint in lowered for hint in _CONTEXT_WINDOW_HINTS))
    ):
        return ContextWindowExceededError(
            detail, status_code=status, headers=relayed, **_kept(fields, "code")
        )
    if status in (400, 422):
        refused = _mentions_policy(lowered) or code in _CONTENT_POLICY_CODES
        if refused and code is None:
            fields["code"] = "content_policy_violation"
        return InvalidRequestError(detail, status_code=status, headers=relayed, **fields)
    if status in (401, 403):
        return UpstreamAuthError(
            f"{provider} refused the credentials configured in Keel (HTTP {status}): {detail}"
        )
    if status == 404:
        fields.setdefault("code", "upstream_not_found")
        return NotFoundError(detail, headers=relayed, **fields)
    if status == 413:
        return RequestTooLargeError(detail, headers=relayed, **fields)
    if status == 429:
        return RateLimitError(message, headers=relayed, **fields)
    if status in (503, 529):
        return UpstreamUnavailableError(message, headers=relayed)
    if status == 504 or status == 408:
        return UpstreamTimeoutError(message)
    if 400 <= status < 500:
        # Any other refusal of the request (405, 409, 415, ...) is the caller's to fix.
        return InvalidRequestError(detail, status_code=status, headers=relayed, **fields)
    return UpstreamError(message)


def _openai_error_fields(body: Any) -> dict[str, Any]:
    """`type`, `code` and `param` of an OpenAI-format error body, where they are strings."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return {}
    fields: dict[str, Any] = {}
    for source, target in (("type", "error_type"), ("code", "code"), ("param", "param")):
        value = error.get(source)
        if isinstance(value, str) and value:
            fields[target] = value[:200]
    return fields


def _kept(fields: dict[str, Any], *without: str) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if name not in without}


def credentials_in(headers: dict[str, str]) -> list[str]:
    """The values a request carries in its headers that may be secrets: every configured
    header is treated as one, not only the well-known names (`keel.secrets` also takes a
    value without its scheme, and leaves out values too short to be credentials)."""
    return [value for name, value in headers.items() if name.lower() not in _PUBLIC_HEADERS]


def _error_code(body: Any) -> str | None:
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def _mentions_policy(text: str) -> bool:
    return any(hint in text for hint in _CONTENT_POLICY_HINTS)


@contextmanager
def transport_errors(provider: str, timeout_s: float) -> Iterator[None]:
    """Translate aiohttp/asyncio failures into Keel's upstream errors."""
    try:
        yield
    except KeelError:
        raise
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise UpstreamTimeoutError(f"{provider} did not answer within {timeout_s:g}s") from exc
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamConnectionError(f"cannot connect to {provider}: {exc.strerror}") from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
        raise UpstreamConnectionError(f"{provider} closed the connection: {exc}") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamConnectionError(f"{provider} request failed: {type(exc).__name__}") from exc


def _timeout(timeout_s: float, connect_timeout_s: float, streaming: bool) -> aiohttp.ClientTimeout:
    if streaming:
        # A stream may run for minutes; what must not happen is silence for longer than timeout_s.
        return aiohttp.ClientTimeout(sock_connect=connect_timeout_s, sock_read=timeout_s)
    return aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)


def _error_response(
    provider: str,
    response: aiohttp.ClientResponse,
    raw: bytes,
    sent_headers: dict[str, str],
    find_message: ErrorMessageFinder,
    openai_errors: bool,
) -> KeelError:
    return error_for_status(
        provider,
        response.status,
        raw,
        find_message=find_message,
        retry_after=response.headers.get("retry-after"),
        credentials=credentials_in(sent_headers),
        relay_fields=openai_errors,
        headers=note_response(response.headers),
    )


def _encoded(payload: dict[str, Any]) -> bytes:
    """The request body. What can't be encoded came from the caller (an integer past 64 bits,
    say): the caller's error, raised before anything reaches the upstream."""
    try:
        return orjson.dumps(payload)
    except orjson.JSONEncodeError as exc:
        raise InvalidRequestError(f"the request cannot be encoded as JSON: {exc}") from None


async def post_json(
    session: aiohttp.ClientSession,
    provider: str,
    url: str,
    payload: dict[str, Any],
    *,
    headers: dict[str, str],
    timeout_s: float,
    connect_timeout_s: float = 10.0,
    find_message: ErrorMessageFinder = default_error_message,
    params: dict[str, str] | None = None,
    forward: Collection[str] = (),
    openai_errors: bool = False,
) -> dict[str, Any]:
    """POST `payload` as JSON. `forward` names the client headers this deployment takes;
    `openai_errors` says the upstream's error bodies are OpenAI's, to be relayed field by field."""
    encoded = _encoded(payload)
    sent = {**forwarded_headers(forward), **headers}
    with transport_errors(provider, timeout_s):
        async with session.post(
            url,
            data=encoded,
            headers={"content-type": "application/json", **sent},
            params=params,
            timeout=_timeout(timeout_s, connect_timeout_s, streaming=False),
        ) as response:
            raw = await response.read()
            if response.status >= 400:
                raise _error_response(provider, response, raw, headers, find_message, openai_errors)
            note_response(response.headers)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UpstreamBadResponseError(f"{provider} returned a body that is not JSON") from exc
    if not isinstance(body, dict):
        raise UpstreamBadResponseError(f"{provider} returned JSON that is not an object")
    return body


async def stream_sse(
    session: aiohttp.ClientSession,
    provider: str,
    url: str,
    payload: dict[str, Any],
    *,
    headers: dict[str, str],
    timeout_s: float,
    connect_timeout_s: float = 10.0,
    find_message: ErrorMessageFinder = default_error_message,
    params: dict[str, str] | None = None,
    forward: Collection[str] = (),
    openai_errors: bool = False,
) -> AsyncIterator[SSEEvent]:
    """POST and yield the server-sent events of the response, per the WHATWG SSE framing."""
    encoded = _encoded(payload)
    sent = {**forwarded_headers(forward), **headers}
    with transport_errors(provider, timeout_s):
        async with session.post(
            url,
            data=encoded,
            headers={
                "content-type": "application/json",
                "accept": "text/event-stream",
                **sent,
            },
            params=params,
            timeout=_timeout(timeout_s, connect_timeout_s, streaming=True),
        ) as response:
            if response.status >= 400:
                raw = await response.read()
                raise _error_response(provider, response, raw, headers, find_message, openai_errors)
            note_response(response.headers)
            event, data = "", list[str]()
            async for raw_line in response.content:
                line = raw_line.decode("utf-8", "replace").rstrip("\r\n")
                if not line:
                    if data:
                        yield SSEEvent(event or "message", "\n".join(data))
                    event, data = "", []
                    continue
                if line.startswith(":"):
                    continue
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "event":
                    event = value
                elif field == "data":
                    data.append(value)
            if data:
                yield SSEEvent(event or "message", "\n".join(data))


def parse_json_event(provider: str, data: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise UpstreamBadResponseError(f"{provider} sent a stream event that is not JSON") from exc
