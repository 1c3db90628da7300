from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import httpx

from keel.sdk.alerts import AlertsAPI
from keel.sdk.audit import AuditAPI
from keel.sdk.drift import DriftAPI
from keel.sdk.governance import GovernanceAPI
from keel.sdk.metrics import MetricsAPI
from keel.sdk.registry import RegistryAPI
from keel.sdk.traces import TraceAPI

__all__ = ["Keel", "KeelAPIError", "KeelConnectionError"]

DEFAULT_URL = "http://127.0.0.1:8080"
Messages = str | list[dict[str, Any]]


class KeelAPIError(Exception):
    """Keel answered with an error body: {"error": {message, type, param, code}}."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        error_type: str | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code

    def __str__(self) -> str:
        return f"{self.status_code} {self.error_type or 'error'}: {self.message}"


class KeelConnectionError(Exception):
    """The Keel server could not be reached."""


class Keel:
    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 600.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = (base_url or os.environ.get("KEEL_URL") or DEFAULT_URL).rstrip("/")
        self.api_key = api_key or os.environ.get("KEEL_API_KEY")
        headers = {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )
        self.registry = RegistryAPI(self._request, http=self._http)
        self.governance = GovernanceAPI(self._request)
        self.audit = AuditAPI(self._request, http=self._http)
        # monitoring: metrics
        self.metrics = MetricsAPI(self._http)
        # monitoring: traces
        self.trace = TraceAPI(self._request)  # keel.trace(request_id)
        # monitoring: feedback and quality
        from keel.sdk.feedback import FeedbackAPI, QualityAPI

        self.feedback = FeedbackAPI(self._request)
        self.quality = QualityAPI(self._request)
        # monitoring: drift
        self.drift = DriftAPI(self._request)
        # monitoring: alerts
        self.alerts = AlertsAPI(self._request)
        # experiments: tracking
        from keel.sdk.tracking import TrackingAPI

        self.tracking = TrackingAPI(self._request, http=self._http)
        # experiments: datasets and prompts
        from keel.sdk.library import DatasetsAPI, PromptsAPI, ScorersAPI

        self.datasets = DatasetsAPI(self._request)
        self.prompts = PromptsAPI(self._request)
        self.scorers = ScorersAPI(self._request, self)

    def __enter__(self) -> Keel:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- inference -------------------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self._request("GET", "/v1/models")["data"]
        return data

    def model(self, model_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/models/{model_id}")

    def chat(self, model: str, messages: Messages, **params: Any) -> dict[str, Any]:
        """A chat completion; `messages` may be a plain string for a single user turn."""
        body = {"model": model, "messages": _messages(messages), **params, "stream": False}
        return self._request("POST", "/v1/chat/completions", json=body)

    def chat_stream(
        self, model: str, messages: Messages, **params: Any
    ) -> Iterator[dict[str, Any]]:
        """Yield chat.completion.chunk dicts as they arrive."""
        body = {"model": model, "messages": _messages(messages), **params, "stream": True}
        return self._stream("/v1/chat/completions", body)

    def complete(self, model: str, prompt: str | list[str], **params: Any) -> dict[str, Any]:
        body = {"model": model, "prompt": prompt, **params}
        return self._request("POST", "/v1/completions", json=body)

    def embed(self, model: str, input: str | list[str], **params: Any) -> dict[str, Any]:
        body = {"model": model, "input": input, **params}
        return self._request("POST", "/v1/embeddings", json=body)

    # -- operations ------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/healthz")

    def ready(self) -> dict[str, Any]:
        return self._request("GET", "/readyz", allow_status=(503,))

    def cache_stats(self) -> dict[str, Any]:
        """`GET /v1/keel/cache`: the server's cache sizes, hits, misses and guard refusals."""
        return self._request("GET", "/v1/keel/cache")

    def deployments(self) -> list[dict[str, Any]]:
        """Each deployment's group, circuit state, latency and load, as this server sees them."""
        data: list[dict[str, Any]] = self._request("GET", "/v1/keel/deployments")["data"]
        return data

    def requests(self, *, limit: int = 50, model: str | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if model:
            params["model"] = model
        data: list[dict[str, Any]] = self._request("GET", "/v1/keel/requests", params=params)[
            "data"
        ]
        return data

    def request_record(self, request_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/keel/requests/{request_id}")

    def openai(self) -> Any:
        """An `openai.OpenAI` client pointed at this Keel server (needs the openai package)."""
        from openai import OpenAI

        return OpenAI(base_url=f"{self.base_url}/v1", api_key=self.api_key or "keel-local")

    # -- plumbing --------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, *, allow_status: tuple[int, ...] = (), **kwargs: Any
    ) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise KeelConnectionError(f"cannot reach Keel at {self.base_url}: {exc}") from exc
        if response.status_code >= 400 and response.status_code not in allow_status:
            raise _api_error(response.status_code, response.content)
        result: dict[str, Any] = response.json()
        return result

    def _stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        try:
            with self._http.stream("POST", path, json=body) as response:
                if response.status_code >= 400:
                    raise _api_error(response.status_code, response.read())
                for line in response.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[len("data: ") :]
                    if data == "[DONE]":
                        return
                    event = json.loads(data)
                    if "error" in event:
                        raise _api_error(_stream_error_status(event["error"]), data.encode())
                    yield event
        except httpx.TransportError as exc:
            raise KeelConnectionError(f"cannot reach Keel at {self.base_url}: {exc}") from exc


def _messages(messages: Messages) -> list[dict[str, Any]]:
    return [{"role": "user", "content": messages}] if isinstance(messages, str) else messages


# A stream that fails after it started can no longer change its HTTP status; its error event
# says what happened in OpenAI's `type` and Keel's `code`, which map back to the status the same
# error gets before a stream starts (docs/api.md, Errors).
_STATUS_BY_CODE = {
    "context_length_exceeded": 400,
    "guardrail_blocked": 400,
    "quota_exceeded": 429,
    "upstream_unavailable": 503,
    "upstream_timeout": 504,
    "quota_unavailable": 503,
}
_STATUS_BY_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "conflict_error": 409,
    "rate_limit_error": 429,
    "client_closed_request": 499,
    "server_error": 500,
    "upstream_error": 502,
}


def _stream_error_status(error: Any) -> int:
    if not isinstance(error, dict):
        return 502
    code, kind = error.get("code"), error.get("type")
    if isinstance(code, str) and code in _STATUS_BY_CODE:
        return _STATUS_BY_CODE[code]
    if isinstance(kind, str) and kind in _STATUS_BY_TYPE:
        return _STATUS_BY_TYPE[kind]
    return 502


def _api_error(status_code: int, raw: bytes) -> KeelAPIError:
    try:
        error = json.loads(raw)["error"]
        return KeelAPIError(
            status_code,
            error.get("message") or "error",
            error_type=error.get("type"),
            param=error.get("param"),
            code=error.get("code"),
        )
    except (ValueError, KeyError, TypeError):
        return KeelAPIError(status_code, raw[:300].decode("utf-8", "replace") or "error")
