"""How evals reach the gateway: a running Keel server over HTTP, or an app started in this
process (embedded mode). Either way every call goes through the same routes with the caller's
key, so quotas, budgets, guardrails and request records (labelled `environment=sandbox` for a
sandbox key) apply to eval traffic exactly as to any other.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx
import orjson

from keel.errors import InvalidRequestError, KeelError

if TYPE_CHECKING:
    from keel.config import Settings

__all__ = ["CallFailed", "Completion", "EvalClient", "connect"]

# Statuses worth another try: rate limits, and the gateway or its upstream being unwell.
_RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})
# Evals measure the model, not the response cache: unless the suite's params say otherwise,
# nothing is answered from the cache or stored in it.
_NO_CACHE = {"no_cache": True, "no_store": True}


@dataclass(frozen=True)
class Completion:
    output: str
    latency_s: float
    cost_usd: float | None
    prompt_tokens: int
    completion_tokens: int
    request_id: str | None


class CallFailed(KeelError):
    """A gateway call that did not produce an answer; `status` is None when Keel could not be
    reached at all."""

    def __init__(
        self, message: str, *, status: int | None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, status_code=status or 502)
        self.status = status
        self.retry_after_s = retry_after_s

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status in _RETRYABLE


@dataclass(frozen=True)
class _Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


# (method, path, json body, query params) -> the reply; raises CallFailed(status=None) when
# Keel cannot be reached.
SendFn = Callable[[str, str, Any, Mapping[str, Any] | None], Awaitable[_Reply]]


def _httpx_sender(http: httpx.AsyncClient, headers: dict[str, str]) -> SendFn:
    """For an in-process app (httpx's ASGI transport) or a client the caller passed in."""

    async def send(method: str, path: str, body: Any, params: Mapping[str, Any] | None) -> _Reply:
        try:
            response = await http.request(
                method, path, json=body, params=dict(params) if params else None, headers=headers
            )
        except httpx.TransportError as exc:
            raise CallFailed(f"cannot reach Keel: {type(exc).__name__}", status=None) from None
        return _Reply(response.status_code, response.headers, response.content)

    return send


def _aiohttp_sender(session: aiohttp.ClientSession, base_url: str) -> SendFn:
    """For a server over the network: aiohttp keeps up with many calls in flight, where
    httpx's connection pool becomes the bottleneck from a few dozen."""

    async def send(method: str, path: str, body: Any, params: Mapping[str, Any] | None) -> _Reply:
        data = None if body is None else orjson.dumps(body)
        headers = {"content-type": "application/json"} if data is not None else None
        try:
            async with session.request(
                method,
                base_url + path,
                data=data,
                params={k: str(v) for k, v in params.items()} if params else None,
                headers=headers,
            ) as response:
                return _Reply(response.status, response.headers, await response.read())
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise CallFailed(f"cannot reach Keel: {type(exc).__name__}", status=None) from None

    return send


class EvalClient:
    """Async access to the gateway and the management routes evals use."""

    def __init__(self, send: SendFn, *, mode: str) -> None:
        self._send = send
        self.mode = mode  # "remote", "embedded" or "given"

    async def models(self) -> set[str]:
        body = await self.get("/v1/models")
        return {str(model.get("id")) for model in body.get("data", [])}

    async def whoami(self) -> dict[str, Any]:
        """Who the key is; {} where the server has no identity for the caller."""
        try:
            return await self.get("/v1/keel/whoami")
        except CallFailed:
            return {}

    async def chat(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> Completion:
        body = {"cache": _NO_CACHE, **params, "model": model, "messages": messages}
        body["stream"] = False
        started = time.perf_counter()
        reply = await self._send("POST", "/v1/chat/completions", body, None)
        latency = time.perf_counter() - started
        if reply.status >= 400:
            raise _failure(reply)
        try:
            data = reply.json()
            choice = data["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise CallFailed("the gateway answered without a message", status=502) from None
        usage = data.get("usage") or {}
        return Completion(
            output=choice.get("content") or "",
            latency_s=latency,
            cost_usd=_cost(reply.headers.get("x-keel-cost-usd")),
            prompt_tokens=_int(usage.get("prompt_tokens")),
            completion_tokens=_int(usage.get("completion_tokens")),
            request_id=reply.headers.get("x-keel-request-id"),
        )

    async def get(self, path: str, **params: Any) -> dict[str, Any]:
        return await self._call("GET", path, None, params or None)

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", path, body, None)

    async def _call(
        self, method: str, path: str, body: Any, params: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        reply = await self._send(method, path, body, params)
        if reply.status >= 400:
            raise _failure(reply)
        try:
            result: dict[str, Any] = reply.json()
        except ValueError:
            raise CallFailed(f"{path}: the answer is not JSON", status=502) from None
        return result


def _failure(reply: _Reply) -> CallFailed:
    try:
        error = reply.json()["error"]
        message = str(error.get("message") or "error")
    except (ValueError, KeyError, TypeError, AttributeError):
        message = reply.body[:200].decode("utf-8", "replace") or "error"
    retry_after = reply.headers.get("retry-after")
    try:
        retry_after_s = float(retry_after) if retry_after else None
    except ValueError:
        retry_after_s = None
    return CallFailed(
        f"{reply.status}: {message}", status=reply.status, retry_after_s=retry_after_s
    )


def _cost(header: str | None) -> float | None:
    if not header or header == "unknown":
        return None
    try:
        return float(header)
    except ValueError:
        return None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@asynccontextmanager
async def connect(
    url: str | None = None,
    *,
    api_key: str | None = None,
    settings: Settings | None = None,
    http: httpx.AsyncClient | None = None,
    timeout_s: float = 600.0,
) -> AsyncIterator[EvalClient]:
    """A client for `url` (a running server), for `http` (a client the caller already has),
    or, with neither, for an app started here from `settings` (default: `load_settings()`,
    i.e. KEEL_CONFIG and KEEL_* variables) and stopped on exit."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    if http is not None:
        yield EvalClient(_httpx_sender(http, headers), mode="given")
        return
    if url:
        connector = aiohttp.TCPConnector(limit=0)  # the runner bounds what is in flight
        async with aiohttp.ClientSession(
            connector=connector,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as session:
            yield EvalClient(_aiohttp_sender(session, url.rstrip("/")), mode="remote")
        return
    from keel.config_loading import load_settings
    from keel.server import create_app

    try:
        settings = settings or load_settings()
        app = create_app(settings)
    except KeelError as exc:
        raise InvalidRequestError(f"cannot start the embedded gateway: {exc}") from None
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        # A loopback name: in open mode Keel answers no other Host.
        async with httpx.AsyncClient(
            transport=transport, base_url="http://127.0.0.1", timeout=timeout_s
        ) as client:
            yield EvalClient(_httpx_sender(client, headers), mode="embedded")
