"""Cohere: the Chat API v2 (`POST /v2/chat`) and Embed v2 (`POST /v2/embed`).

Cohere v2 is close to OpenAI in shape (role-tagged messages, OpenAI-style function tools, tool-call
arguments as JSON text) but renames sampling parameters (`p`, `stop_sequences`), reports its own
finish reasons and usage blocks, and streams typed events (`content-delta`, `tool-call-start`, ...)
instead of chunk deltas. Everything here is translation in both directions; nothing is forwarded
verbatim.
"""

from __future__ import annotations

import base64
import struct
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any, ClassVar, cast

from keel.errors import (
    InvalidRequestError,
    UnsupportedParameterError,
    UpstreamBadResponseError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamTimeoutError,
)
from keel.providers._http import SSEEvent, parse_json_event, post_json, stream_sse
from keel.providers._openai_format import (
    chat_chunk,
    chat_completion,
    new_completion_id,
    usage,
    usage_chunk,
)
from keel.providers.base import COMMON_CHAT_PARAMS, Provider
from keel.schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    EmbeddingRequest,
    ImagePart,
    ResponseFormat,
    TextPart,
    Tool,
)

__all__ = ["COHERE_API_BASE", "CohereProvider"]

COHERE_API_BASE = "https://api.cohere.com"

# Cohere refuses more than 96 texts per embed call; OpenAI clients send up to 2048.
_EMBED_BATCH_SIZE = 96
_DEFAULT_INPUT_TYPE = "search_document"

_FINISH_REASONS = {
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "MAX_TOKENS": "length",
    "TOOL_CALL": "tool_calls",
}
_TOOL_CHOICES = {"auto": None, "required": "REQUIRED", "none": "NONE"}


def _error_message(body: Any) -> str | None:
    """Cohere error bodies are `{"id": ..., "message": "..."}`."""
    if isinstance(body, dict):
        for key in ("message", "data"):
            if isinstance(body.get(key), str):
                return str(body[key])
    return None


def _dig(value: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _usage(raw: Any) -> dict[str, Any] | None:
    # `tokens` is what the model processed, Cohere's own prompt scaffolding included; responses
    # that leave it out still carry `billed_units`.
    for block in ("tokens", "billed_units"):
        counts = _dig(raw, block)
        if isinstance(counts, dict) and isinstance(counts.get("input_tokens"), int | float):
            output = counts.get("output_tokens")
            return usage(
                int(counts["input_tokens"]),
                int(output) if isinstance(output, int | float) else 0,
            )
    return None


def _finish_reason(provider: str, raw: Any, error: Any = None) -> str:
    if raw in ("ERROR", "TIMEOUT"):
        detail = f": {error}" if isinstance(error, str) and error else ""
        error_class = UpstreamTimeoutError if raw == "TIMEOUT" else UpstreamError
        raise error_class(f"{provider} stopped generating with finish_reason {raw}{detail}")
    if isinstance(raw, str):
        return _FINISH_REASONS.get(raw, "stop")
    return "stop"


# --- OpenAI request -> Cohere request -------------------------------------------------------


def _cohere_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    translated: list[dict[str, Any]] = []
    for message in messages:
        if message.role in ("system", "developer"):
            translated.append({"role": "system", "content": message.text()})
        elif message.role == "user":
            translated.append({"role": "user", "content": _user_content(message)})
        elif message.role == "assistant":
            translated.append(_assistant_message(message))
        elif message.role == "tool":
            if not message.tool_call_id:
                raise InvalidRequestError(
                    "a message with role 'tool' needs a tool_call_id", param="messages"
                )
            translated.append(
                {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.text()}
            )
        else:
            raise InvalidRequestError(
                "the legacy 'function' role is not supported by provider 'cohere'; "
                "use tool_calls and role 'tool'",
                param="messages",
            )
    return translated


def _user_content(message: ChatMessage) -> str | list[dict[str, Any]]:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    parts: list[dict[str, Any]] = []
    for part in message.content:
        if isinstance(part, TextPart):
            parts.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            image: dict[str, Any] = {"url": part.image_url.url}
            if part.image_url.detail is not None:
                image["detail"] = part.image_url.detail
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise InvalidRequestError(
                f"content parts of type {part.type!r} are not supported by provider 'cohere'",
                param="messages",
            )
    return parts


def _assistant_message(message: ChatMessage) -> dict[str, Any]:
    if message.function_call is not None:
        raise InvalidRequestError(
            "the legacy function_call field is not supported by provider 'cohere'; use tool_calls",
            param="messages",
        )
    text = message.text()
    calls = message.function_calls("provider 'cohere'")
    if not calls:
        return {"role": "assistant", "content": text}
    translated: dict[str, Any] = {
        "role": "assistant",
        "tool_calls": [
            {
                "id": call.id,
                "type": "function",
                # Cohere parses the arguments, and an empty string is not JSON.
                "function": {
                    "name": call.function.name,
                    "arguments": call.function.arguments or "{}",
                },
            }
            for call in calls
        ],
    }
    if text:
        # Cohere keeps what an assistant says before calling tools in `tool_plan`, not `content`.
        translated["tool_plan"] = text
    return translated


def _cohere_tools(tools: list[Tool]) -> list[dict[str, Any]]:
    translated = []
    for tool in tools:
        function: dict[str, Any] = {
            "name": tool.function.name,
            # Cohere requires a schema; OpenAI lets a no-argument function omit it.
            "parameters": tool.function.parameters or {"type": "object", "properties": {}},
        }
        if tool.function.description:
            function["description"] = tool.function.description
        translated.append({"type": "function", "function": function})
    return translated


def _cohere_tool_choice(choice: str | dict[str, Any] | None) -> str | None:
    if choice is None:
        return None
    if isinstance(choice, dict):
        raise UnsupportedParameterError(
            "provider 'cohere' cannot force a specific function; "
            "use tool_choice 'required', 'auto' or 'none'",
            param="tool_choice",
        )
    return _TOOL_CHOICES[choice]


def _cohere_response_format(response_format: ResponseFormat | None) -> dict[str, Any] | None:
    if response_format is None or response_format.type == "text":
        return None
    translated: dict[str, Any] = {"type": "json_object"}
    json_schema = response_format.json_schema
    if response_format.type == "json_schema" and json_schema and json_schema.schema_:
        translated["json_schema"] = json_schema.schema_
    return translated


# --- Cohere response -> OpenAI response -----------------------------------------------------


def _openai_tool_call(raw: Any, *, default_arguments: str = "{}") -> dict[str, Any]:
    name = _dig(raw, "function", "name")
    arguments = _dig(raw, "function", "arguments")
    call_id = _dig(raw, "id")
    return {
        "id": call_id if isinstance(call_id, str) and call_id else f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {
            "name": name if isinstance(name, str) else "",
            "arguments": arguments if isinstance(arguments, str) else default_arguments,
        },
    }


class _StreamTranslator:
    """Turns Cohere v2 stream events, in order, into OpenAI `chat.completion.chunk` dicts."""

    def __init__(self, provider: str, model: str) -> None:
        self.provider = provider
        self.model = model
        self.completion_id = new_completion_id()
        self.created = int(time.time())
        self.finished = False
        self._started = False
        # Cohere's event `index` numbers content blocks, text included; OpenAI numbers tool calls
        # from 0 in the order they start.
        self._tool_indexes: dict[Any, int] = {}

    def _chunk(
        self, delta: dict[str, Any], finish_reason: str | None = None
    ) -> ChatCompletionChunk:
        return chat_chunk(
            completion_id=self.completion_id,
            model=self.model,
            delta=delta,
            finish_reason=finish_reason,
            created=self.created,
        )

    def feed(self, event: dict[str, Any]) -> list[ChatCompletionChunk]:
        chunks: list[ChatCompletionChunk] = []
        if not self._started:
            self._started = True
            chunks.append(self._chunk({"role": "assistant", "content": ""}))
        kind = event.get("type")
        if kind == "content-delta":
            # Reasoning models also stream `thinking` content here; only text is the reply.
            text = _dig(event, "delta", "message", "content", "text")
            if isinstance(text, str) and text:
                chunks.append(self._chunk({"content": text}))
        elif kind == "tool-call-start":
            chunks.append(self._tool_call_start(event))
        elif kind == "tool-call-delta":
            arguments = _dig(event, "delta", "message", "tool_calls", "function", "arguments")
            if isinstance(arguments, str) and arguments:
                index = self._tool_indexes.get(event.get("index"))
                if index is None:
                    raise UpstreamBadResponseError(
                        f"{self.provider} streamed tool-call arguments for a call it never started"
                    )
                call = {"index": index, "function": {"arguments": arguments}}
                chunks.append(self._chunk({"tool_calls": [call]}))
        elif kind == "message-end":
            delta = event.get("delta")
            reason = _finish_reason(
                self.provider, _dig(delta, "finish_reason"), _dig(delta, "error")
            )
            chunks.append(self._chunk({}, finish_reason=reason))
            chunks.append(
                usage_chunk(
                    completion_id=self.completion_id,
                    model=self.model,
                    usage=_usage(_dig(delta, "usage")) or usage(0, 0),
                    created=self.created,
                )
            )
            self.finished = True
        # message-start, content-start/-end, tool-plan-delta, tool-call-end and citation events
        # carry nothing an OpenAI chunk can express.
        return chunks

    def _tool_call_start(self, event: dict[str, Any]) -> ChatCompletionChunk:
        index = len(self._tool_indexes)
        self._tool_indexes[event.get("index", index)] = index
        # Cohere starts a call with empty arguments; OpenAI clients concatenate the fragments.
        call = _openai_tool_call(
            _dig(event, "delta", "message", "tool_calls"), default_arguments=""
        )
        return self._chunk({"tool_calls": [{"index": index, **call}]})


def _encode_embedding(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        # What OpenAI sends for base64: the vector as little-endian float32 bytes.
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


class CohereProvider(Provider):
    name: ClassVar[str] = "cohere"
    known_options: ClassVar[frozenset[str] | None] = frozenset({"input_type"})
    supports_embeddings = True
    chat_params = COMMON_CHAT_PARAMS | {
        "seed",
        "frequency_penalty",
        "presence_penalty",
        "response_format",
        "parallel_tool_calls",
    }
    required_config = ("api_key",)

    def _url(self, endpoint: str) -> str:
        base = (self.config.api_base or COHERE_API_BASE).rstrip("/")
        return f"{base}/v2/{endpoint}"

    def _headers(self) -> dict[str, str]:
        headers = dict(self.config.headers)
        if self.config.api_key is not None:
            headers["authorization"] = f"Bearer {self.config.api_key.get_secret_value()}"
        return headers

    async def _post(self, endpoint: str, payload: dict[str, Any]) -> dict[str, Any]:
        return await post_json(
            self.http,
            self.name,
            self._url(endpoint),
            payload,
            headers=self._headers(),
            timeout_s=self.config.timeout_s,
            connect_timeout_s=self.config.connect_timeout_s,
            find_message=_error_message,
            forward=self.forwarded_headers,
        )

    def _chat_payload(self, request: ChatCompletionRequest, *, stream: bool) -> dict[str, Any]:
        self.check_chat_request(request)
        payload: dict[str, Any] = {
            "model": self.upstream_model,
            "messages": _cohere_messages(request.messages),
            "stream": stream,
        }
        if request.temperature is not None:
            payload["temperature"] = request.temperature
        if request.top_p is not None:
            # Cohere accepts p in [0.01, 0.99]; top_p=1 (no nucleus cut) is common from clients.
            payload["p"] = min(max(request.top_p, 0.01), 0.99)
        if (limit := request.output_token_limit()) is not None:
            payload["max_tokens"] = limit
        if stops := request.stop_list():
            payload["stop_sequences"] = stops
        for param in ("seed", "frequency_penalty", "presence_penalty"):
            if (value := getattr(request, param)) is not None:
                payload[param] = value
        if (response_format := _cohere_response_format(request.response_format)) is not None:
            payload["response_format"] = response_format
        if tools := request.function_tools(f"provider {self.name!r} (model {self.config.id!r})"):
            payload["tools"] = _cohere_tools(tools)
            if any(tool.function.strict for tool in tools):
                payload["strict_tools"] = True
        if (tool_choice := _cohere_tool_choice(request.tool_choice)) is not None:
            payload["tool_choice"] = tool_choice
        if request.parallel_tool_calls is False:
            # Cohere may call several tools in one turn and has no switch to stop it.
            raise UnsupportedParameterError(
                "parallel_tool_calls=false is not supported by provider 'cohere'",
                param="parallel_tool_calls",
            )
        return payload

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletion:
        body = await self._post("chat", self._chat_payload(request, stream=False))
        message = body.get("message")
        if not isinstance(message, dict):
            raise UpstreamBadResponseError(f"{self.name} returned a chat response without message")
        finish_reason = _finish_reason(self.name, body.get("finish_reason"))
        text = "".join(
            item["text"]
            for item in message.get("content") or []
            if isinstance(item, dict)
            and item.get("type") == "text"
            and isinstance(item.get("text"), str)
        )
        tool_calls = [_openai_tool_call(call) for call in message.get("tool_calls") or []]
        reply: dict[str, Any] = {
            "role": "assistant",
            "content": text or (None if tool_calls else ""),
        }
        if tool_calls:
            reply["tool_calls"] = tool_calls
        return chat_completion(
            completion_id=new_completion_id(),
            model=self.upstream_model,
            choices=[{"index": 0, "message": reply, "finish_reason": finish_reason}],
            usage=_usage(body.get("usage")),
        )

    def chat_stream(self, request: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        # Built before the stream starts so a bad request fails on the call, not mid-iteration.
        return self._stream(self._chat_payload(request, stream=True))

    async def _stream(self, payload: dict[str, Any]) -> AsyncIterator[ChatCompletionChunk]:
        translator = _StreamTranslator(self.name, self.upstream_model)
        # stream_sse is an async generator; closing it explicitly releases the upstream
        # connection as soon as message-end arrives or the consumer stops reading.
        events = cast(
            AsyncGenerator[SSEEvent, None],
            stream_sse(
                self.http,
                self.name,
                self._url("chat"),
                payload,
                headers=self._headers(),
                timeout_s=self.config.timeout_s,
                connect_timeout_s=self.config.connect_timeout_s,
                find_message=_error_message,
                forward=self.forwarded_headers,
            ),
        )
        async with aclosing(events):
            async for sse in events:
                event = parse_json_event(self.name, sse.data)
                if not isinstance(event, dict):
                    raise UpstreamBadResponseError(
                        f"{self.name} sent a stream event that is not an object"
                    )
                event.setdefault("type", sse.event)
                for chunk in translator.feed(event):
                    yield chunk
                if translator.finished:
                    return
        raise UpstreamConnectionError(
            f"{self.name} ended the stream before message-end; the reply is incomplete"
        )

    async def embed(self, request: EmbeddingRequest) -> dict[str, Any]:
        texts = request.texts()
        if texts is None:
            raise InvalidRequestError(
                "provider 'cohere' embeds text only; token-id input is not supported",
                param="input",
            )
        input_type = str(self.config.options.get("input_type", _DEFAULT_INPUT_TYPE))
        vectors: list[list[float]] = []
        prompt_tokens = 0
        for start in range(0, len(texts), _EMBED_BATCH_SIZE):
            batch = texts[start : start + _EMBED_BATCH_SIZE]
            payload: dict[str, Any] = {
                "model": self.upstream_model,
                "texts": batch,
                "input_type": input_type,
                "embedding_types": ["float"],
            }
            if request.dimensions is not None:
                payload["output_dimension"] = request.dimensions
            body = await self._post("embed", payload)
            batch_vectors = _dig(body, "embeddings", "float")
            if not isinstance(batch_vectors, list) or len(batch_vectors) != len(batch):
                raise UpstreamBadResponseError(
                    f"{self.name} did not return one float embedding per text"
                )
            vectors.extend(batch_vectors)
            counted = _usage(body.get("meta"))
            prompt_tokens += counted["prompt_tokens"] if counted else 0
        return {
            "object": "list",
            "data": [
                {
                    "object": "embedding",
                    "index": index,
                    "embedding": _encode_embedding(vector, request.encoding_format),
                }
                for index, vector in enumerate(vectors)
            ],
            "model": self.upstream_model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }
