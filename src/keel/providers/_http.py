"""HTTP plumbing shared by the remote providers: JSON calls, SSE streams, and error translation.

Vendor and transport errors are translated here, at the seam, into Keel's error tree; provider
modules only say how to find the message in their error bodies.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

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
) -> KeelError:
    """The Keel error for an upstream HTTP error response, with `credentials` blanked out."""
    try:
        body: Any = orjson.loads(raw_body) if raw_body else None
    except orjson.JSONDecodeError:
        body = None
    detail = find_message(body) if body is not None else None
    if detail is None:
        detail = raw_body.decode("utf-8", "replace").strip() or "no error body"
    for secret in credentials:
        # Some servers repeat the key they refused; it must not travel on to clients or logs.
        detail = detail.replace(secret, "[redacted]")
    detail = detail[:1000]
    message = f"{provider} returned HTTP {status}: {detail}"
    lowered = detail.lower()
    headers = {"retry-after": retry_after} if retry_after else None
    if status in (400, 422) and any(hint in lowered for hint in _CONTEXT_WINDOW_HINTS):
        return ContextWindowExceededError(message)
    if status in (400, 422):
        refused = _mentions_policy(lowered) or _error_code(body) in _CONTENT_POLICY_CODES
        return InvalidRequestError(message, code="content_policy_violation" if refused else None)
    if status in (401, 403):
        return UpstreamAuthError(
            f"{provider} refused the credentials configured in Keel (HTTP {status}): {detail}"
        )
    if status == 404:
        return NotFoundError(message, code="upstream_not_found")
    if status == 413:
        return RequestTooLargeError(message)
    if status == 429:
        return RateLimitError(message, headers=headers)
    if status in (503, 529):
        return UpstreamUnavailableError(message, headers=headers)
    if status == 504 or status == 408:
        return UpstreamTimeoutError(message)
    return UpstreamError(message)


_CREDENTIAL_HEADERS = frozenset({"authorization", "api-key", "x-api-key", "x-goog-api-key"})


def credentials_in(headers: dict[str, str]) -> list[str]:
    """The secret values a request carries in its headers (with and without a scheme)."""
    found = []
    for name, value in headers.items():
        if name.lower() in _CREDENTIAL_HEADERS:
            found.append(value)
            _, _, token = value.partition(" ")
            if token:
                found.append(token)
    return sorted((secret for secret in found if len(secret) >= 4), key=len, reverse=True)


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
) -> KeelError:
    return error_for_status(
        provider,
        response.status,
        raw,
        find_message=find_message,
        retry_after=response.headers.get("retry-after"),
        credentials=credentials_in(sent_headers),
    )


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
) -> dict[str, Any]:
    with transport_errors(provider, timeout_s):
        async with session.post(
            url,
            data=orjson.dumps(payload),
            headers={"content-type": "application/json", **headers},
            params=params,
            timeout=_timeout(timeout_s, connect_timeout_s, streaming=False),
        ) as response:
            raw = await response.read()
            if response.status >= 400:
                raise _error_response(provider, response, raw, headers, find_message)
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
) -> AsyncIterator[SSEEvent]:
    """POST and yield the server-sent events of the response, per the WHATWG SSE framing."""
    with transport_errors(provider, timeout_s):
        async with session.post(
            url,
            data=orjson.dumps(payload),
            headers={
                "content-type": "application/json",
                "accept": "text/event-stream",
                **headers,
            },
            params=params,
            timeout=_timeout(timeout_s, connect_timeout_s, streaming=True),
        ) as response:
            if response.status >= 400:
                raw = await response.read()
                raise _error_response(provider, response, raw, headers, find_message)
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
