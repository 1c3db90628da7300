"""The OpenAI wire format Keel speaks to applications and providers, as pydantic models.

Requests are validated here once; responses and stream chunks travel as plain dicts in the same
format (`ChatCompletion`, `ChatCompletionChunk`) because building a pydantic object per streamed
token would cost more than the rest of the request path together.

Validation follows OpenAI's API reference for OpenAI's own parameters: strict JSON types (a bool
is `true`/`false`, an integer is a JSON integer, a string is a string; numbers may be integers or
decimals) and OpenAI's documented ranges, for every provider. Fields OpenAI does not define are
kept as sent. Requests are forwarded from these models (`wire_dump`), so a number stays the
integer or decimal the client wrote, and an explicit `null` stays `null`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError

from keel.errors import UnsupportedParameterError

__all__ = [
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "CustomTool",
    "CustomToolCall",
    "EmbeddingRequest",
    "FunctionCall",
    "Number",
    "ResponseFormat",
    "StreamOptions",
    "Tool",
    "ToolCall",
]

ChatCompletion = dict[str, Any]
ChatCompletionChunk = dict[str, Any]


def _json_number(value: object) -> object:
    # Python's bool is an int, JSON's true is not a number; "2" is a string.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("number_type", "Input should be a number")
    return value


# A JSON number, kept as the integer or decimal it was sent as (`temperature: 1` is forwarded as
# `1`, not `1.0`): upstreams, and clients comparing what was sent, can tell them apart.
Number = Annotated[int | float, BeforeValidator(_json_number), WithJsonSchema({"type": "number"})]


def _between(minimum: int, maximum: int) -> WithJsonSchema:
    # The range as JSON Schema states it (the API description); Field(ge, le) checks it.
    return WithJsonSchema({"type": "number", "minimum": minimum, "maximum": maximum})


LogitBias = dict[str, Annotated[Number, Field(ge=-100, le=100), _between(-100, 100)]]
Penalty = Annotated[Number, Field(ge=-2, le=2), _between(-2, 2)]
Temperature = Annotated[Number, Field(ge=0, le=2), _between(0, 2)]
TopP = Annotated[Number, Field(ge=0, le=1), _between(0, 1)]
ChoiceCount = Annotated[int, Field(ge=1, le=128)]
Stop = str | Annotated[list[str], Field(max_length=4)]
Metadata = Annotated[
    dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
    Field(max_length=16),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Open(BaseModel):
    # Providers add fields faster than Keel can follow them; unknown ones are kept and forwarded
    # to providers that accept them, and refused by name for providers that don't.
    model_config = ConfigDict(extra="allow", strict=True)

    def wire_dump(self) -> dict[str, Any]:
        """The fields as the client sent them (unknown ones included, explicit nulls kept,
        defaults it left out left out), with whatever Keel changed since (masked text)."""
        return self.model_dump(exclude_unset=True, by_alias=True)


class FunctionCall(_Open):
    name: str
    arguments: str = ""


class ToolCall(_Open):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class CustomCall(_Open):
    name: str
    input: str


class CustomToolCall(_Open):
    """A call of a custom (free-form input) tool, in an assistant message of the history."""

    id: str
    type: Literal["custom"]
    custom: CustomCall


def _function_unless_typed(value: object) -> str:
    # OpenAI's function tools and calls may leave `type` out; it then means "function".
    if isinstance(value, dict):
        return str(value.get("type", "function"))
    return str(getattr(value, "type", "function"))


AnyToolCall = Annotated[
    Annotated[ToolCall, Tag("function")] | Annotated[CustomToolCall, Tag("custom")],
    Discriminator(
        _function_unless_typed,
        custom_error_type="invalid_tool_call_type",
        custom_error_message="a tool call's type must be 'function' or 'custom'",
    ),
]


class ImageURL(_Open):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(_Open):
    type: Literal["text"]
    text: str


class ImagePart(_Open):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(_Open):
    data: str
    format: str


class AudioPart(_Open):
    type: Literal["input_audio"]
    input_audio: InputAudio


class FilePart(_Open):
    type: Literal["file"]
    file: dict[str, Any]


class RefusalPart(_Open):
    type: Literal["refusal"]
    refusal: str


ContentPart = Annotated[
    TextPart | ImagePart | AudioPart | FilePart | RefusalPart, Field(discriminator="type")
]


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[AnyToolCall] | None = None
    tool_call_id: str | None = None
    function_call: FunctionCall | None = None

    def text(self) -> str:
        """The message's text, with non-text parts left out."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content if isinstance(part, TextPart))

    def function_calls(self, where: str) -> list[ToolCall]:
        """The tool calls, for providers that translate function calls only; a custom tool's
        call is refused by name (`where`: the provider and model, for the message)."""
        calls = []
        for call in self.tool_calls or ():
            if not isinstance(call, ToolCall):
                raise UnsupportedParameterError(
                    f"calls of custom tools in messages are not supported by {where}",
                    param="messages",
                )
            calls.append(call)
        return calls


class FunctionDefinition(_Open):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Open):
    """A function tool (`{"type": "function", "function": {...}}`)."""

    type: Literal["function"] = "function"
    function: FunctionDefinition


class CustomToolDefinition(_Open):
    name: str = Field(min_length=1)
    description: str | None = None
    format: dict[str, Any] | None = None


class CustomTool(_Open):
    """A custom tool: the model calls it with free-form text (`{"type": "custom", ...}`)."""

    type: Literal["custom"]
    custom: CustomToolDefinition


AnyTool = Annotated[
    Annotated[Tool, Tag("function")] | Annotated[CustomTool, Tag("custom")],
    Discriminator(
        _function_unless_typed,
        custom_error_type="invalid_tool_type",
        custom_error_message="a tool's type must be 'function' or 'custom'",
    ),
]


class StreamOptions(_Open):
    include_usage: bool | None = None


class JSONSchemaFormat(_Open):
    name: str = Field(min_length=1, max_length=64)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class ChatCompletionRequest(_Open):
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: ChoiceCount | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: Stop | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: LogitBias | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    seed: int | None = None
    user: str | None = None
    tools: list[AnyTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: str | None = None
    metadata: Metadata | None = None
    # OpenAI's other parameters: typed so that a wrong type is a 400 here, and otherwise
    # forwarded as sent (translating providers refuse them by name).
    store: bool | None = None
    service_tier: str | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    verbosity: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def output_token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def wants_usage_chunk(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def set_params(self) -> dict[str, Any]:
        """Parameters the client actually set to a value (besides model and messages), extras
        included; an explicit null counts as not set."""
        params = self.model_dump(exclude_unset=True, exclude_none=True, by_alias=True)
        params.pop("model", None)
        params.pop("messages", None)
        return params

    def function_tools(self, where: str) -> list[Tool]:
        """The tools, for providers that translate function tools only; a custom tool is
        refused by name (`where`: the provider and model, for the message)."""
        tools = []
        for tool in self.tools or ():
            if not isinstance(tool, Tool):
                raise UnsupportedParameterError(
                    f"custom tools are not supported by {where}", param="tools"
                )
            tools.append(tool)
        return tools


TokenIds = list[int]
# OpenAI's prompt and embedding input shapes: text, texts, token ids, lists of token ids.
TextsOrTokens = str | list[str] | TokenIds | list[TokenIds]


class CompletionRequest(_Open):
    model: str = Field(min_length=1)
    prompt: TextsOrTokens
    best_of: int | None = Field(default=None, ge=0, le=20)
    max_tokens: int | None = Field(default=16, ge=0)
    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: ChoiceCount | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: Stop | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: LogitBias | None = None
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool | None = None
    seed: int | None = None
    suffix: str | None = None
    user: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, value: TextsOrTokens) -> TextsOrTokens:
        if isinstance(value, list) and not value:
            raise ValueError("prompt must not be empty")
        return value

    def text_prompts(self) -> list[str] | None:
        """The prompt as texts, or None when the client sent token ids."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if all(isinstance(item, str) for item in self.prompt):
            return [str(item) for item in self.prompt]
        return None

    def token_prompts(self) -> list[list[int]] | None:
        """The prompt as lists of token ids, or None when the client sent text."""
        if isinstance(self.prompt, str):
            return None
        single = [item for item in self.prompt if isinstance(item, int)]
        if len(single) == len(self.prompt):
            return [single]
        lists = [item for item in self.prompt if isinstance(item, list)]
        return lists if len(lists) == len(self.prompt) else None

    def prompts(self) -> list[str]:
        """The prompt as texts, for models that take text only: token ids are refused."""
        texts = self.text_prompts()
        if texts is None:
            raise UnsupportedParameterError(
                f"model {self.model!r} takes text prompts; token-id prompts are not supported",
                param="prompt",
            )
        return texts


class EmbeddingRequest(_Open):
    model: str = Field(min_length=1)
    input: TextsOrTokens
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: TextsOrTokens) -> TextsOrTokens:
        if isinstance(value, list) and not value:
            raise ValueError("input must not be empty")
        return value

    def texts(self) -> list[str] | None:
        """The input as strings, or None when the client sent token ids."""
        if isinstance(self.input, str):
            return [self.input]
        if all(isinstance(item, str) for item in self.input):
            return [str(item) for item in self.input]
        return None
