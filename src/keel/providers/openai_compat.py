"""OpenAI, and every server that speaks its API: vLLM, Ollama, llama.cpp server, Groq, Together,
Mistral, DeepSeek, OpenRouter, LM Studio, ... — plus Azure OpenAI's URL and api-version scheme.

Requests are forwarded as the client sent them: only the model name changes (and, on streams,
`stream_options.include_usage`, which Keel needs for accounting). Parameters these servers add on
top of OpenAI's (vLLM's `top_k`, say) pass through untouched, integers stay integers and explicit
nulls stay null. What Keel changed in the request on its way (masked text) is what is sent.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any, ClassVar, cast

from keel.errors import UpstreamBadResponseError, UpstreamError
from keel.providers._http import (
    SSEEvent,
    default_error_message,
    parse_json_event,
    post_json,
    stream_sse,
)
from keel.providers.base import Provider
from keel.providers.exchange import OPENAI_FORWARDED_HEADERS
from keel.schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
)

__all__ = ["AzureOpenAIProvider", "OpenAICompatibleProvider"]

OPENAI_API_BASE = "https://api.openai.com/v1"


class OpenAICompatibleProvider(Provider):
    name: ClassVar[str] = "openai"
    known_options: ClassVar[frozenset[str] | None] = frozenset({"stream_usage"})
    supports_completions = True
    supports_embeddings = True
    chat_params = None
    default_forwarded_headers = OPENAI_FORWARDED_HEADERS

    def _url(self, endpoint: str) -> str:
        base = (self.config.api_base or OPENAI_API_BASE).rstrip("/")
        return f"{base}/{endpoint}"

    def _query(self) -> dict[str, str] | None:
        return None

    def _headers(self) -> dict[str, str]:
        headers = dict(self.config.headers)
        if self.config.api_key is not None:
            headers["authorization"] = f"Bearer {self.config.api_key.get_secret_value()}"
        if self.config.organization:
            headers["openai-organization"] = self.config.organization
        return headers

    def _payload(
        self, request: ChatCompletionRequest | CompletionRequest | EmbeddingRequest
    ) -> dict[str, Any]:
        payload = request.wire_dump()
        payload["model"] = self.upstream_model
        return payload

    def _stream_payload(self, request: ChatCompletionRequest | CompletionRequest) -> dict[str, Any]:
        payload = self._payload(request)
        payload["stream"] = True
        if self.config.options.get("stream_usage", True):
            # Keel needs usage for accounting even when the client did not ask for it.
            sent = payload.get("stream_options") or {}  # absent, or an explicit null
            payload["stream_options"] = {**sent, "include_usage": True}
        return payload

    def _request_options(self) -> dict[str, Any]:
        return {
            "headers": self._headers(),
            "params": self._query(),
            "timeout_s": self.config.timeout_s,
            "connect_timeout_s": self.config.connect_timeout_s,
            "forward": self.forwarded_headers,
            "openai_errors": True,
        }

    async def _post(self, endpoint: str, payload: dict[str, Any]) -> dict[str, Any]:
        url = self._url(endpoint)
        return await post_json(self.http, self.name, url, payload, **self._request_options())

    async def _stream(
        self, endpoint: str, payload: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        # stream_sse is an async generator; it is typed as an iterator.
        events = cast(
            AsyncGenerator[SSEEvent, None],
            stream_sse(
                self.http, self.name, self._url(endpoint), payload, **self._request_options()
            ),
        )
        finished = False
        # Closing the event stream on every exit releases its connection now, not when the
        # generator is collected (an exception's traceback can keep it alive for long).
        async with aclosing(events):
            async for event in events:
                if event.data == "[DONE]":
                    finished = True
                    break
                chunk = parse_json_event(self.name, event.data)
                if not isinstance(chunk, dict):
                    raise UpstreamBadResponseError(
                        f"{self.name} sent a stream event that is not a JSON object"
                    )
                if "error" in chunk:
                    detail = default_error_message(chunk) or "stream error"
                    raise UpstreamError(f"{self.name} reported an error mid-stream: {detail}")
                choices = chunk.get("choices") or ()
                if any(isinstance(c, dict) and c.get("finish_reason") for c in choices):
                    finished = True
                yield chunk
        if not finished:
            # A stream that stops with neither [DONE] nor a finish reason was cut short.
            raise UpstreamBadResponseError(f"{self.name} ended the stream before it finished")

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletion:
        return await self._post("chat/completions", self._payload(request))

    def chat_stream(self, request: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        return self._stream("chat/completions", self._stream_payload(request))

    async def complete(self, request: CompletionRequest) -> dict[str, Any]:
        return await self._post("completions", self._payload(request))

    def complete_stream(self, request: CompletionRequest) -> AsyncIterator[dict[str, Any]]:
        return self._stream("completions", self._stream_payload(request))

    async def embed(self, request: EmbeddingRequest) -> dict[str, Any]:
        return await self._post("embeddings", self._payload(request))


class AzureOpenAIProvider(OpenAICompatibleProvider):
    """Azure OpenAI: `{api_base}/openai/deployments/{deployment}/...?api-version=...`, `api-key`.

    With no `api_version`, the version-less v1 API (`{api_base}/openai/v1/...`) is used and the
    deployment name goes in the body as the model.
    """

    name: ClassVar[str] = "azure"
    required_config = ("api_base", "api_key")

    def _url(self, endpoint: str) -> str:
        base = (self.config.api_base or "").rstrip("/")
        if self.config.api_version is None:
            return f"{base}/openai/v1/{endpoint}"
        return f"{base}/openai/deployments/{self.upstream_model}/{endpoint}"

    def _query(self) -> dict[str, str] | None:
        if self.config.api_version is None:
            return None
        return {"api-version": self.config.api_version}

    def _headers(self) -> dict[str, str]:
        headers = dict(self.config.headers)
        if self.config.api_key is not None:
            headers["api-key"] = self.config.api_key.get_secret_value()
        return headers
