"""Anthropic's Messages API (`POST /v1/messages`), translated to and from OpenAI chat completions.

Requests: system and developer messages become the top-level `system` (Anthropic has no system
turns); consecutive messages of one role are merged, because Anthropic requires user and assistant
turns to alternate; `tool` messages become `tool_result` blocks of a user turn; image parts become
image blocks (data: URLs as base64 sources, http(s) URLs as url sources) and PDF files sent as
data: URLs become document blocks.

Parameters: Anthropic requires `max_tokens`; when the client sets neither `max_tokens` nor
`max_completion_tokens`, the deployment's `options.max_tokens` (default 4096) is sent. `n` above
1 is refused (Anthropic returns one completion per call); `n=1` is accepted as the no-op it is.
`metadata` is accepted and stays on Keel's side: in OpenAI's API it only tags stored completions,
and Anthropic's `metadata` holds nothing but `user_id`, which `user` maps to.

`response_format`: `json_schema` maps to Anthropic's native structured outputs
(`output_config.format`). Models without structured outputs answer 400, which reaches the client
as an invalid request naming the problem. `json_object` is refused: Anthropic has no schema-less
JSON mode, and imitating one with a prompt would promise a guarantee Keel cannot keep.

Responses: `thinking` blocks (produced when the deployment's `options.thinking` enables extended
thinking) are exposed as `reasoning_content`; redacted thinking and server-tool blocks are
dropped. Prompt-cache reads and writes are billed input, so both count in `prompt_tokens`; reads
are also reported as `cached_tokens`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import orjson

from keel.errors import (
    ConfigError,
    InvalidRequestError,
    UnsupportedParameterError,
    UpstreamAuthError,
    UpstreamBadResponseError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from keel.providers._http import parse_json_event, post_json, stream_sse
from keel.providers._openai_format import (
    chat_chunk,
    chat_completion,
    new_completion_id,
    usage_chunk,
)
from keel.providers._openai_format import usage as openai_usage
from keel.providers.base import COMMON_CHAT_PARAMS, Provider
from keel.schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    ContentPart,
    FilePart,
    FunctionDefinition,
    ImagePart,
    RefusalPart,
    TextPart,
)

__all__ = ["AnthropicProvider", "anthropic_error_message"]

ANTHROPIC_API_BASE = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# An error event arrives after the 200 status line, when the client already holds part of the
# answer, so it can only be reported as an upstream failure; its type picks which one.
_STREAM_ERRORS: dict[str, type[UpstreamError]] = {
    "overloaded_error": UpstreamUnavailableError,
    "rate_limit_error": UpstreamUnavailableError,
    "timeout_error": UpstreamTimeoutError,
    "authentication_error": UpstreamAuthError,
    "permission_error": UpstreamAuthError,
}


def anthropic_error_message(body: Any) -> str | None:
    """The message of an Anthropic error body: `{"type": "error", "error": {"type", "message"}}`."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return None
    kind = error.get("type")
    return f"{error['message']} ({kind})" if isinstance(kind, str) else str(error["message"])


class AnthropicProvider(Provider):
    name: ClassVar[str] = "anthropic"
    known_options: ClassVar[frozenset[str] | None] = frozenset({"max_tokens", "thinking"})
    chat_params = COMMON_CHAT_PARAMS | {"parallel_tool_calls", "response_format"}
    required_config = ("api_key",)

    def check_chat_request(self, request: ChatCompletionRequest) -> None:
        # n=1 asks for exactly what Anthropic returns, and some SDKs always send it.
        super().check_chat_request(
            request.model_copy(update={"n": None}) if request.n == 1 else request
        )
        if request.response_format is not None and request.response_format.type == "json_object":
            raise UnsupportedParameterError(
                "response_format type 'json_object' is not supported by provider 'anthropic' "
                f"(model {self.config.id!r}): it has no schema-less JSON mode; use 'json_schema'",
                param="response_format",
            )

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletion:
        body = await post_json(
            self.http,
            self.name,
            self._url(),
            self._payload(request, stream=False),
            headers=self._headers(),
            timeout_s=self.config.timeout_s,
            connect_timeout_s=self.config.connect_timeout_s,
            find_message=anthropic_error_message,
            forward=self.forwarded_headers,
        )
        return _completion(body, self.upstream_model)

    def chat_stream(self, request: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        # Built here rather than inside the generator so a refused request raises at the call.
        return self._stream(self._payload(request, stream=True))

    def _url(self) -> str:
        base = (self.config.api_base or ANTHROPIC_API_BASE).rstrip("/")
        # Configs copied from other clients give the base with or without the version segment.
        return f"{base}/messages" if base.endswith("/v1") else f"{base}/v1/messages"

    def _headers(self) -> dict[str, str]:
        if self.config.api_key is None:
            raise ConfigError(f"model {self.config.id!r}: provider 'anthropic' needs api_key")
        return {
            "anthropic-version": ANTHROPIC_VERSION,
            **self.config.headers,
            "x-api-key": self.config.api_key.get_secret_value(),
        }

    def _payload(self, request: ChatCompletionRequest, *, stream: bool) -> dict[str, Any]:
        self.check_chat_request(request)
        system, messages = _translate_messages(request.messages)
        if not messages:
            raise InvalidRequestError(
                "provider 'anthropic' needs at least one user or assistant message",
                param="messages",
            )
        default_max_tokens = int(self.config.options.get("max_tokens", DEFAULT_MAX_TOKENS))
        payload: dict[str, Any] = {
            "model": self.upstream_model,
            "max_tokens": request.output_token_limit() or default_max_tokens,
            "messages": messages,
        }
        if system:
            payload["system"] = system
        if request.temperature is not None:
            payload["temperature"] = request.temperature
        if request.top_p is not None:
            payload["top_p"] = request.top_p
        if stops := request.stop_list():
            payload["stop_sequences"] = stops
        if request.user:
            payload["metadata"] = {"user_id": request.user}
        if tools := request.function_tools(f"provider {self.name!r} (model {self.config.id!r})"):
            payload["tools"] = [_tool(tool.function) for tool in tools]
            if (choice := _tool_choice(request)) is not None:
                payload["tool_choice"] = choice
        response_format = request.response_format
        if response_format is not None and response_format.type == "json_schema":
            schema = response_format.json_schema.schema_ if response_format.json_schema else None
            if schema is None:
                raise InvalidRequestError(
                    "response_format 'json_schema' needs json_schema.schema",
                    param="response_format",
                )
            payload["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
        if "thinking" in self.config.options:
            payload["thinking"] = self.config.options["thinking"]
        if stream:
            payload["stream"] = True
        return payload

    async def _stream(self, payload: dict[str, Any]) -> AsyncIterator[ChatCompletionChunk]:
        events = stream_sse(
            self.http,
            self.name,
            self._url(),
            payload,
            headers=self._headers(),
            timeout_s=self.config.timeout_s,
            connect_timeout_s=self.config.connect_timeout_s,
            find_message=anthropic_error_message,
            forward=self.forwarded_headers,
        )
        created = int(time.time())
        completion_id, model = new_completion_id(), self.upstream_model
        raw_usage: dict[str, int] = {}
        # OpenAI numbers tool calls 0, 1, ...; Anthropic numbers every content block.
        tool_indexes: dict[int, int] = {}

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> ChatCompletionChunk:
            return chat_chunk(
                completion_id=completion_id,
                model=model,
                delta=delta,
                finish_reason=finish_reason,
                created=created,
            )

        async for event in events:
            data = _object(parse_json_event(self.name, event.data))
            kind = data.get("type", event.event)
            if kind == "message_start":
                message = _object(data.get("message"))
                completion_id = str(message.get("id") or completion_id)
                model = str(message.get("model") or model)
                _merge_usage(raw_usage, message.get("usage"))
                yield chunk({"role": "assistant", "content": ""})
            elif kind == "content_block_start":
                block = _object(data.get("content_block"))
                if block.get("type") == "tool_use":
                    index = tool_indexes.setdefault(data.get("index", -1), len(tool_indexes))
                    function = {"name": block.get("name"), "arguments": ""}
                    call = {"index": index, "id": block.get("id"), "type": "function"}
                    yield chunk({"tool_calls": [{**call, "function": function}]})
                elif block.get("type") == "text" and block.get("text"):
                    yield chunk({"content": block["text"]})
            elif kind == "content_block_delta":
                if (delta := self._delta(data, tool_indexes)) is not None:
                    yield chunk(delta)
            elif kind == "message_delta":
                _merge_usage(raw_usage, data.get("usage"))
                yield chunk({}, _finish_reason(_object(data.get("delta")).get("stop_reason")))
            elif kind == "message_stop":
                yield usage_chunk(
                    completion_id=completion_id,
                    model=model,
                    usage=_usage(raw_usage),
                    created=created,
                )
                return
            elif kind == "error":
                error = _object(data.get("error"))
                error_class = _STREAM_ERRORS.get(str(error.get("type")), UpstreamError)
                detail = anthropic_error_message(data) or "no error detail"
                raise error_class(f"{self.name} reported an error mid-stream: {detail}")
            # ping, content_block_stop and event types newer than this adapter carry nothing
            # that OpenAI's chunk format can express.
        raise UpstreamConnectionError(f"{self.name} ended the stream before message_stop")

    def _delta(self, data: dict[str, Any], tool_indexes: dict[int, int]) -> dict[str, Any] | None:
        delta = _object(data.get("delta"))
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            return {"content": delta["text"]}
        if kind == "thinking_delta" and delta.get("thinking"):
            return {"reasoning_content": delta["thinking"]}
        if kind == "input_json_delta" and delta.get("partial_json"):
            index = tool_indexes.get(data.get("index", -1))
            if index is None:
                raise UpstreamBadResponseError(
                    f"{self.name} sent tool input for a content block that is not a tool_use"
                )
            return {
                "tool_calls": [{"index": index, "function": {"arguments": delta["partial_json"]}}]
            }
        # signature_delta and citations_delta have no OpenAI counterpart.
        return None


def _translate_messages(messages: list[ChatMessage]) -> tuple[str, list[dict[str, Any]]]:
    """OpenAI messages as Anthropic's (system, alternating user/assistant turns)."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for position, message in enumerate(messages):
        where = f"messages[{position}]"
        if message.role in ("system", "developer"):
            if text := message.text():
                system.append(text)
            continue
        role, blocks = _turn(message, where)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return "\n\n".join(system), turns


def _turn(message: ChatMessage, where: str) -> tuple[str, list[dict[str, Any]]]:
    if message.role == "user":
        return "user", _content_blocks(message.content, f"{where}.content")
    if message.role == "assistant":
        if message.function_call is not None:
            raise UnsupportedParameterError(
                f"{where}.function_call: legacy function calls are not supported by provider "
                "'anthropic'; use tool_calls",
                param="messages",
            )
        blocks = _content_blocks(message.content, f"{where}.content")
        for call in message.function_calls("provider 'anthropic'"):
            arguments = _parse_arguments(call.function.arguments, f"{where}.tool_calls")
            blocks.append(
                {"type": "tool_use", "id": call.id, "name": call.function.name, "input": arguments}
            )
        return "assistant", blocks
    if message.role == "tool":
        if not message.tool_call_id:
            raise InvalidRequestError(
                f"{where}: a tool message needs tool_call_id", param="messages"
            )
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
        if content := _content_blocks(message.content, f"{where}.content"):
            result["content"] = content
        return "user", [result]
    raise UnsupportedParameterError(
        f"{where}: the legacy 'function' role is not supported by provider 'anthropic'; "
        "use tool messages",
        param="messages",
    )


def _content_blocks(content: str | list[ContentPart] | None, where: str) -> list[dict[str, Any]]:
    # Anthropic rejects empty text blocks, which OpenAI clients send freely.
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, TextPart):
            if part.text:
                blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, RefusalPart):
            blocks.append({"type": "text", "text": part.refusal})
        elif isinstance(part, ImagePart):
            blocks.append({"type": "image", "source": _image_source(part.image_url.url, where)})
        elif isinstance(part, FilePart):
            blocks.append(_document(part, where))
        else:
            raise UnsupportedParameterError(
                f"{where}: {part.type!r} content is not supported by provider 'anthropic'",
                param="messages",
            )
    return blocks


def _split_data_url(url: str) -> tuple[str, str] | None:
    """(media type, base64 payload) of a `data:<type>;base64,<payload>` URL."""
    header, comma, data = url.partition(",")
    if not url.startswith("data:") or not comma or not header.endswith(";base64"):
        return None
    return header.removeprefix("data:").split(";")[0], data


def _image_source(url: str, where: str) -> dict[str, Any]:
    if inline := _split_data_url(url):
        return {"type": "base64", "media_type": inline[0], "data": inline[1]}
    if url.startswith(("https://", "http://")):
        return {"type": "url", "url": url}
    raise InvalidRequestError(
        f"{where}: image_url must be an http(s) URL or a base64 data: URL", param="messages"
    )


def _document(part: FilePart, where: str) -> dict[str, Any]:
    file_data = part.file.get("file_data")
    inline = _split_data_url(file_data) if isinstance(file_data, str) else None
    if inline is None:
        raise UnsupportedParameterError(
            f"{where}: provider 'anthropic' accepts files only as base64 data: URLs in file_data",
            param="messages",
        )
    return {
        "type": "document",
        "source": {"type": "base64", "media_type": inline[0], "data": inline[1]},
    }


def _parse_arguments(arguments: str, where: str) -> dict[str, Any]:
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        raise InvalidRequestError(
            f"{where}: function arguments are not valid JSON", param="messages"
        ) from None
    if not isinstance(value, dict):
        raise InvalidRequestError(
            f"{where}: function arguments must be a JSON object", param="messages"
        )
    return value


def _tool(function: FunctionDefinition) -> dict[str, Any]:
    tool: dict[str, Any] = {
        "name": function.name,
        # Anthropic requires a schema; OpenAI lets a function without parameters omit it.
        "input_schema": function.parameters or {"type": "object", "properties": {}},
    }
    if function.description:
        tool["description"] = function.description
    if function.strict:
        tool["strict"] = True
    return tool


def _tool_choice(request: ChatCompletionRequest) -> dict[str, Any] | None:
    choice = request.tool_choice
    if choice == "none":
        return {"type": "none"}
    result: dict[str, Any]
    if choice is None or choice == "auto":
        result = {"type": "auto"}
    elif choice == "required":
        result = {"type": "any"}
    else:
        function = choice.get("function") if choice.get("type") == "function" else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            raise InvalidRequestError(
                'tool_choice must be "none", "auto", "required" or '
                '{"type": "function", "function": {"name": ...}}',
                param="tool_choice",
            )
        result = {"type": "tool", "name": name}
    if request.parallel_tool_calls is False:
        result["disable_parallel_tool_use"] = True
    elif choice is None:
        return None  # Anthropic's default is auto with parallel calls, as is OpenAI's.
    return result


def _completion(body: dict[str, Any], fallback_model: str) -> ChatCompletion:
    content = body.get("content")
    if body.get("type") != "message" or not isinstance(content, list):
        raise UpstreamBadResponseError("anthropic returned a body that is not a message")
    texts: list[str] = []
    reasoning: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in map(_object, content):
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "thinking":
            reasoning.append(str(block.get("thinking", "")))
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            tool_calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": arguments},
                }
            )
    # OpenAI's content is null, not "", when the model only called tools.
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not tool_calls else None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    raw_usage = body.get("usage")
    return chat_completion(
        completion_id=str(body.get("id") or new_completion_id()),
        model=str(body.get("model") or fallback_model),
        choices=[
            {
                "index": 0,
                "message": message,
                "finish_reason": _finish_reason(body.get("stop_reason")),
            }
        ],
        usage=_usage(raw_usage) if isinstance(raw_usage, dict) else None,
    )


def _finish_reason(stop_reason: Any) -> str:
    return _FINISH_REASONS.get(str(stop_reason), "stop")


def _usage(raw: dict[str, Any]) -> dict[str, Any]:
    def count(key: str) -> int:
        value = raw.get(key)
        return value if isinstance(value, int) else 0

    cache_read = count("cache_read_input_tokens")
    prompt = count("input_tokens") + cache_read + count("cache_creation_input_tokens")
    return openai_usage(prompt, count("output_tokens"), cached_tokens=cache_read)


def _merge_usage(into: dict[str, int], raw: Any) -> None:
    # message_delta may carry null counts; only numbers update the running totals.
    if isinstance(raw, dict):
        into.update({key: value for key, value in raw.items() if isinstance(value, int)})


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
