"""Google Gemini (the generativelanguage v1beta API): OpenAI chat completions translated to
`generateContent` / `streamGenerateContent` and back.

Deployment `options`:

- `schema_format`: "json_schema" (default) sends OpenAI's JSON Schemas unchanged, as
  `parametersJsonSchema` and `responseJsonSchema`; "openapi" sends them as `parameters` and
  `responseSchema`, the OpenAPI subset that models older than Gemini 2.5 understand.
- `generation_config`: extra generationConfig fields (topK, thinkingConfig, ...); values the
  request sets take precedence.
- `safety_settings`: sent as `safetySettings`.

Thought signatures ride on tool calls as `extra_content.google.thought_signature`, the field
Google's own OpenAI-compatible endpoint uses, so clients written for it already send them back;
Gemini 3 refuses a function-call history without them.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

import orjson

from keel.errors import (
    ConfigError,
    InvalidRequestError,
    UpstreamAuthError,
    UpstreamBadResponseError,
    UpstreamError,
)
from keel.providers._http import default_error_message, parse_json_event, post_json, stream_sse
from keel.providers._openai_format import (
    chat_chunk,
    chat_completion,
    new_completion_id,
    usage,
    usage_chunk,
)
from keel.providers.base import COMMON_CHAT_PARAMS, Provider
from keel.schemas import (
    AudioPart,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    FilePart,
    FunctionCall,
    ImagePart,
    RefusalPart,
    TextPart,
    Tool,
    ToolCall,
)

if TYPE_CHECKING:
    import aiohttp

    from keel.config import DeploymentConfig

__all__ = ["GEMINI_API_BASE", "GeminiProvider"]

GEMINI_API_BASE = "https://generativelanguage.googleapis.com"

_FILTERED = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"}
)
_TOOL_CHOICE_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
_SCHEMA_FIELDS = {
    "json_schema": ("parametersJsonSchema", "responseJsonSchema"),
    "openapi": ("parameters", "responseSchema"),
}


def gemini_error_message(body: Any) -> str | None:
    """Message, status and reasons from `{"error": {"code", "message", "status", "details"}}`."""
    if isinstance(body, list) and body:  # streamed calls without alt=sse answer with a list
        body = body[0]
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return default_error_message(body)
    message = str(error.get("message") or "no message")
    details = error.get("details")
    reasons = [d.get("reason") for d in details if isinstance(d, dict)] if details else []
    labels = [label for label in (error.get("status"), *reasons) if isinstance(label, str)]
    return f"{message} ({', '.join(labels)})" if labels else message


@contextmanager
def _credential_errors(provider: str) -> Iterator[None]:
    # Gemini answers a bad API key with 400 INVALID_ARGUMENT. The key is Keel's configuration,
    # not the client's request, so the client must not be told to fix its request.
    try:
        yield
    except InvalidRequestError as exc:
        if "API_KEY_INVALID" not in exc.message:
            raise
        raise UpstreamAuthError(
            f"{provider} refused the credentials configured in Keel: {exc.message}"
        ) from exc


class GeminiProvider(Provider):
    name: ClassVar[str] = "gemini"
    known_options: ClassVar[frozenset[str] | None] = frozenset(
        {"schema_format", "safety_settings", "generation_config"}
    )
    chat_params = COMMON_CHAT_PARAMS | {
        "n",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "response_format",
    }
    required_config = ("api_key",)

    def __init__(self, config: DeploymentConfig, http: aiohttp.ClientSession) -> None:
        super().__init__(config, http)
        schema_format = config.options.get("schema_format", "json_schema")
        if schema_format not in _SCHEMA_FIELDS:
            raise ConfigError(
                f"model {config.id!r}: options.schema_format must be one of "
                f"{', '.join(_SCHEMA_FIELDS)}, not {schema_format!r}"
            )
        self._parameters_field, self._response_schema_field = _SCHEMA_FIELDS[schema_format]

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletion:
        self.check_chat_request(request)
        payload = self._payload(request)
        with _credential_errors(self.name):
            body = await post_json(
                self.http, self.name, self._url("generateContent"), payload, **self._http_options()
            )
        _raise_if_prompt_blocked(body)
        candidates = body.get("candidates") or []
        if not candidates:
            raise UpstreamBadResponseError(f"{self.name} answered without any candidate")
        choices = [_choice(candidate, position) for position, candidate in enumerate(candidates)]
        choices.sort(key=lambda choice: int(choice["index"]))
        return chat_completion(
            completion_id=new_completion_id(),
            model=body.get("modelVersion") or self.upstream_model,
            choices=choices,
            usage=_usage(body.get("usageMetadata") or {}),
        )

    def chat_stream(self, request: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        # Checked and translated now, so a bad request fails before any byte is streamed.
        self.check_chat_request(request)
        return self._stream(self._payload(request))

    async def _stream(self, payload: dict[str, Any]) -> AsyncIterator[ChatCompletionChunk]:
        state = _StreamState(new_completion_id(), int(time.time()), self.upstream_model)
        usage_metadata: dict[str, Any] = {}
        url = self._url("streamGenerateContent")
        options = self._http_options()
        events = stream_sse(self.http, self.name, url, payload, params={"alt": "sse"}, **options)
        with _credential_errors(self.name):
            async for event in events:
                body = parse_json_event(self.name, event.data)
                if not isinstance(body, dict):
                    raise UpstreamBadResponseError(
                        f"{self.name} sent a stream event that is not an object"
                    )
                if "error" in body:
                    detail = gemini_error_message(body)
                    raise UpstreamError(f"{self.name} reported an error mid-stream: {detail}")
                _raise_if_prompt_blocked(body)
                state.model = body.get("modelVersion") or state.model
                usage_metadata = body.get("usageMetadata") or usage_metadata
                for position, candidate in enumerate(body.get("candidates") or []):
                    for chunk in state.chunks(candidate, position):
                        yield chunk
        if not state.started or state.started - state.finished:
            # Gemini marks the end of a candidate only with finishReason; a stream that stops
            # without one was cut, and passing it on as complete would hide a truncated answer.
            raise UpstreamBadResponseError(
                f"{self.name} ended the stream before the answer was finished"
            )
        yield usage_chunk(
            completion_id=state.completion_id,
            model=state.model,
            usage=_usage(usage_metadata),
            created=state.created,
        )

    def _url(self, method: str) -> str:
        base = (self.config.api_base or GEMINI_API_BASE).rstrip("/")
        # An api_base may name the API version itself (".../v1beta", ".../v1alpha").
        if not re.fullmatch(r"v1\w*", urlsplit(base).path.rsplit("/", 1)[-1]):
            base += "/v1beta"
        model = self.upstream_model.removeprefix("models/")
        return f"{base}/models/{model}:{method}"

    def _http_options(self) -> dict[str, Any]:
        # The key goes in a header, never in `?key=`: URLs end up in logs and error messages.
        headers = dict(self.config.headers)
        if self.config.api_key is not None:
            headers["x-goog-api-key"] = self.config.api_key.get_secret_value()
        return {
            "headers": headers,
            "timeout_s": self.config.timeout_s,
            "connect_timeout_s": self.config.connect_timeout_s,
            "find_message": gemini_error_message,
            "forward": self.forwarded_headers,
        }

    def _payload(self, request: ChatCompletionRequest) -> dict[str, Any]:
        system, contents = _contents(request.messages)
        payload: dict[str, Any] = {"contents": contents}
        if system:
            payload["systemInstruction"] = {"parts": system}
        generation_config = self._generation_config(request)
        if generation_config:
            payload["generationConfig"] = generation_config
        if tools := request.function_tools(f"provider {self.name!r} (model {self.config.id!r})"):
            declarations = [self._declaration(tool) for tool in tools]
            payload["tools"] = [{"functionDeclarations": declarations}]
            if request.tool_choice is not None:
                payload["toolConfig"] = _tool_config(request.tool_choice)
        safety_settings = self.config.options.get("safety_settings")
        if safety_settings:
            payload["safetySettings"] = safety_settings
        return payload

    def _generation_config(self, request: ChatCompletionRequest) -> dict[str, Any]:
        config: dict[str, Any] = dict(self.config.options.get("generation_config") or {})
        values = {
            "temperature": request.temperature,
            "topP": request.top_p,
            "maxOutputTokens": request.output_token_limit(),
            "candidateCount": request.n,
            "seed": request.seed,
            "presencePenalty": request.presence_penalty,
            "frequencyPenalty": request.frequency_penalty,
        }
        config.update({key: value for key, value in values.items() if value is not None})
        if stops := request.stop_list():
            config["stopSequences"] = stops
        response_format = request.response_format
        if response_format is not None and response_format.type != "text":
            config["responseMimeType"] = "application/json"
            json_schema = response_format.json_schema
            if response_format.type == "json_schema" and json_schema and json_schema.schema_:
                config[self._response_schema_field] = json_schema.schema_
        return config

    def _declaration(self, tool: Tool) -> dict[str, Any]:
        function = tool.function
        declaration: dict[str, Any] = {"name": function.name}
        if function.description:
            declaration["description"] = function.description
        if function.parameters:
            declaration[self._parameters_field] = function.parameters
        return declaration


# Request translation ------------------------------------------------------------------------


def _contents(messages: list[ChatMessage]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The systemInstruction parts and the contents for `messages`."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    # Gemini names the function a result belongs to; OpenAI only gives the id of the call.
    tool_names: dict[str, str] = {}
    for message in messages:
        if message.role in ("system", "developer"):
            if text := message.text():
                system.append({"text": text})
            continue
        if message.role == "assistant":
            role, parts = "model", _assistant_parts(message, tool_names)
        elif message.role in ("tool", "function"):
            role, parts = "user", [_function_response(message, tool_names)]
        else:
            role, parts = "user", _user_parts(message)
        if not parts:
            continue  # Gemini refuses a turn without parts
        # Gemini wants turns to alternate; parallel tool results must share one turn.
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    return system, contents


def _user_parts(message: ChatMessage) -> list[dict[str, Any]]:
    if isinstance(message.content, str):
        return [{"text": message.content}] if message.content else []
    parts: list[dict[str, Any]] = []
    for part in message.content or []:
        if isinstance(part, TextPart):
            if part.text:  # Gemini refuses empty text parts
                parts.append({"text": part.text})
        elif isinstance(part, ImagePart):
            parts.append({"inlineData": _inline_data(part.image_url.url)})
        elif isinstance(part, AudioPart):
            audio = part.input_audio
            parts.append({"inlineData": {"mimeType": f"audio/{audio.format}", "data": audio.data}})
        elif isinstance(part, FilePart):
            parts.append({"inlineData": _inline_data(str(part.file.get("file_data", "")))})
        elif isinstance(part, RefusalPart):
            parts.append({"text": part.refusal})
    return parts


def _inline_data(url: str) -> dict[str, str]:
    # Keel fetches nothing on a client's behalf, and Gemini's fileData is meant for URIs of its
    # own Files API, so only inline data: URLs translate.
    header, sep, data = url.partition(",")
    if not (url.startswith("data:") and sep and header.endswith(";base64")):
        raise InvalidRequestError(
            "gemini accepts images and files only as base64 data: URLs",
            param="messages",
        )
    mime_type = header.removeprefix("data:").removesuffix(";base64")
    return {"mimeType": mime_type or "application/octet-stream", "data": data}


def _assistant_parts(message: ChatMessage, tool_names: dict[str, str]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"text": text}] if (text := message.text()) else []
    for call in message.function_calls("provider 'gemini'"):
        tool_names[call.id] = call.function.name
        part: dict[str, Any] = {
            "functionCall": {"name": call.function.name, "args": _arguments(call.function)}
        }
        if signature := _thought_signature(call):
            part["thoughtSignature"] = signature
        parts.append(part)
    if message.function_call is not None:
        function = message.function_call
        parts.append({"functionCall": {"name": function.name, "args": _arguments(function)}})
    return parts


def _arguments(function: FunctionCall) -> dict[str, Any]:
    if not function.arguments.strip():
        return {}
    try:
        arguments = orjson.loads(function.arguments)
    except orjson.JSONDecodeError:
        arguments = None
    if not isinstance(arguments, dict):
        raise InvalidRequestError(
            f"the arguments of tool call {function.name!r} must be a JSON object",
            param="messages",
        )
    return arguments


def _thought_signature(call: ToolCall) -> str | None:
    extra = (call.model_extra or {}).get("extra_content")
    google = extra.get("google") if isinstance(extra, dict) else None
    signature = google.get("thought_signature") if isinstance(google, dict) else None
    return signature if isinstance(signature, str) else None


def _function_response(message: ChatMessage, tool_names: dict[str, str]) -> dict[str, Any]:
    name = tool_names.get(message.tool_call_id or "") or message.name
    if not name:
        raise InvalidRequestError(
            f"tool message with tool_call_id {message.tool_call_id!r} answers no tool call "
            "made earlier in the conversation",
            param="messages",
        )
    return {"functionResponse": {"name": name, "response": _tool_result(message.text())}}


def _tool_result(text: str) -> dict[str, Any]:
    # `response` must be a JSON object; anything else is wrapped the way Google's examples do.
    try:
        result: Any = orjson.loads(text)
    except orjson.JSONDecodeError:
        result = text
    return result if isinstance(result, dict) else {"result": result}


def _tool_config(choice: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(choice, str):
        return {"functionCallingConfig": {"mode": _TOOL_CHOICE_MODES[choice]}}
    function = choice.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if choice.get("type") != "function" or not isinstance(name, str):
        raise InvalidRequestError(
            'tool_choice must be "none", "auto", "required" or '
            '{"type": "function", "function": {"name": ...}}',
            param="tool_choice",
        )
    return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}


# Response translation -----------------------------------------------------------------------


def _raise_if_prompt_blocked(body: dict[str, Any]) -> None:
    feedback = body.get("promptFeedback") or {}
    reason = feedback.get("blockReason")
    if reason and not body.get("candidates"):
        raise InvalidRequestError(
            f"gemini refused the prompt (blockReason {reason})", code="content_policy_violation"
        )


def _choice(candidate: dict[str, Any], position: int) -> dict[str, Any]:
    text, tool_calls = _read_parts(candidate)
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "index": candidate.get("index", position),
        "message": message,
        "finish_reason": _finish_reason(candidate.get("finishReason"), bool(tool_calls)),
    }


def _read_parts(candidate: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]]]:
    """The candidate's answer text (thoughts left out) and its function calls as tool calls."""
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for part in (candidate.get("content") or {}).get("parts") or []:
        if part.get("thought"):
            continue
        if "text" in part:
            texts.append(part["text"])
        elif "functionCall" in part:
            tool_calls.append(_tool_call(part))
    return ("".join(texts) if texts else None), tool_calls


def _tool_call(part: dict[str, Any]) -> dict[str, Any]:
    call = part["functionCall"]
    tool_call: dict[str, Any] = {
        "id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {
            "name": call.get("name", ""),
            "arguments": orjson.dumps(call.get("args") or {}).decode(),
        },
    }
    if signature := part.get("thoughtSignature"):
        tool_call["extra_content"] = {"google": {"thought_signature": signature}}
    return tool_call


def _finish_reason(reason: str | None, has_tool_calls: bool) -> str:
    if reason in _FILTERED:
        return "content_filter"
    if reason == "MAX_TOKENS":
        return "length"
    return "tool_calls" if has_tool_calls else "stop"


def _usage(metadata: dict[str, Any]) -> dict[str, Any]:
    # promptTokenCount already includes cached tokens, as OpenAI's prompt_tokens does; OpenAI's
    # completion_tokens includes reasoning, Gemini's candidatesTokenCount does not.
    prompt = int(metadata.get("promptTokenCount", 0)) + int(
        metadata.get("toolUsePromptTokenCount", 0)
    )
    thoughts = metadata.get("thoughtsTokenCount")
    completion = int(metadata.get("candidatesTokenCount", 0)) + int(thoughts or 0)
    return usage(
        prompt,
        completion,
        cached_tokens=metadata.get("cachedContentTokenCount"),
        reasoning_tokens=thoughts,
    )


@dataclass
class _StreamState:
    """What a stream has said so far, per candidate index."""

    completion_id: str
    created: int
    model: str
    started: set[int] = field(default_factory=set)
    finished: set[int] = field(default_factory=set)
    tool_call_counts: dict[int, int] = field(default_factory=dict)

    def chunks(self, candidate: dict[str, Any], position: int) -> Iterator[ChatCompletionChunk]:
        index = int(candidate.get("index", position))
        if index not in self.started:
            self.started.add(index)
            yield self._chunk(index, {"role": "assistant", "content": ""})
        text, tool_calls = _read_parts(candidate)
        if text:
            yield self._chunk(index, {"content": text})
        if tool_calls:
            # Gemini sends each function call whole, so each goes out as one complete delta.
            first = self.tool_call_counts.get(index, 0)
            self.tool_call_counts[index] = first + len(tool_calls)
            numbered = [{"index": first + n, **call} for n, call in enumerate(tool_calls)]
            yield self._chunk(index, {"tool_calls": numbered})
        reason = candidate.get("finishReason")
        if reason and index not in self.finished:
            self.finished.add(index)
            has_tool_calls = self.tool_call_counts.get(index, 0) > 0
            yield self._chunk(index, {}, _finish_reason(reason, has_tool_calls))

    def _chunk(
        self, index: int, delta: dict[str, Any], finish_reason: str | None = None
    ) -> ChatCompletionChunk:
        return chat_chunk(
            completion_id=self.completion_id,
            model=self.model,
            delta=delta,
            index=index,
            finish_reason=finish_reason,
            created=self.created,
        )
