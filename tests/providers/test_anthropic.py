"""AnthropicProvider against a fake Anthropic server on a real loopback socket."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from keel.config import DeploymentConfig
from keel.errors import (
    ContextWindowExceededError,
    InvalidRequestError,
    RateLimitError,
    RequestTooLargeError,
    UnsupportedParameterError,
    UpstreamAuthError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamUnavailableError,
)
from keel.providers import load_provider_class
from keel.providers.anthropic import AnthropicProvider
from keel.schemas import ChatCompletionRequest
from tests.fakes.anthropic import (
    FakeAnthropic,
    Reply,
    error_reply,
    text_reply,
    tool_use_reply,
)
from tests.fakes.server import serve_on_loopback

API_KEY = "sk-ant-test"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture(scope="module")
def served_fake() -> Iterator[FakeAnthropic]:
    # One server per module: starting and stopping uvicorn per test would dominate the run time.
    fake = FakeAnthropic(api_key=API_KEY)
    with serve_on_loopback(fake.app) as url:
        fake.url = url
        yield fake


@pytest.fixture
def fake(served_fake: FakeAnthropic) -> FakeAnthropic:
    served_fake.reset()
    return served_fake


def make_provider(
    fake: FakeAnthropic, http: aiohttp.ClientSession, **overrides: Any
) -> AnthropicProvider:
    settings: dict[str, Any] = {
        "id": "claude",
        "provider": "anthropic",
        "model": "claude-sonnet-4-5",
        "api_base": fake.url,
        "api_key": API_KEY,
        **overrides,
    }
    return AnthropicProvider(DeploymentConfig(**settings), http)


@pytest.fixture
async def provider(fake: FakeAnthropic) -> AsyncIterator[AnthropicProvider]:
    async with aiohttp.ClientSession() as http:
        yield make_provider(fake, http)


def chat_request(*messages: dict[str, Any], **params: Any) -> ChatCompletionRequest:
    if not messages:
        messages = ({"role": "user", "content": "Hi"},)
    return ChatCompletionRequest.model_validate(
        {"model": "claude", "messages": list(messages), **params}
    )


async def collect(provider: AnthropicProvider, request: ChatCompletionRequest) -> list[Any]:
    return [chunk async for chunk in provider.chat_stream(request)]


def tool_call_deltas(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        call
        for chunk in chunks
        for choice in chunk["choices"]
        for call in choice["delta"].get("tool_calls", [])
    ]


# --- request translation ----------------------------------------------------------------------


def test_is_registered_under_its_name() -> None:
    assert load_provider_class("anthropic") is AnthropicProvider
    assert AnthropicProvider.required_config == ("api_key",)


async def test_system_and_multi_turn_conversation(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    await provider.chat(
        chat_request(
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": "Answer in French."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Bonjour."},
            {"role": "user", "content": [{"type": "text", "text": "How are you?"}]},
        )
    )

    sent = fake.last
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == API_KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.body == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 4096,
        "system": "You are terse.\n\nAnswer in French.",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Bonjour."}]},
            {"role": "user", "content": [{"type": "text", "text": "How are you?"}]},
        ],
    }


async def test_consecutive_messages_of_one_role_are_merged_and_images_translated(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    await provider.chat(
        chat_request(
            {"role": "user", "content": "Look at these."},
            {
                "role": "user",
                "content": [
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
                    },
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                ],
            },
            {"role": "assistant", "content": ""},
        )
    )

    assert fake.last.body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Look at these."},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
                },
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            ],
        }
    ]


async def test_pdf_files_become_document_blocks_and_audio_is_refused(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    pdf = {
        "type": "file",
        "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"},
    }
    await provider.chat(chat_request({"role": "user", "content": [pdf]}))
    assert fake.last.body["messages"][0]["content"] == [
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"},
        }
    ]

    audio = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
    with pytest.raises(UnsupportedParameterError, match="input_audio"):
        await provider.chat(chat_request({"role": "user", "content": [audio]}))


async def test_sampling_parameters_are_mapped(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    await provider.chat(
        chat_request(temperature=0.3, top_p=0.9, max_tokens=50, stop=["END", "STOP"], user="u-42")
    )
    body = fake.last.body
    assert body["temperature"] == 0.3
    assert body["top_p"] == 0.9
    assert body["max_tokens"] == 50
    assert body["stop_sequences"] == ["END", "STOP"]
    assert body["metadata"] == {"user_id": "u-42"}

    await provider.chat(chat_request(max_completion_tokens=77, stop="\n\n"))
    assert fake.last.body["max_tokens"] == 77
    assert fake.last.body["stop_sequences"] == ["\n\n"]


async def test_default_max_tokens_comes_from_deployment_options(fake: FakeAnthropic) -> None:
    async with aiohttp.ClientSession() as http:
        provider = make_provider(fake, http, options={"max_tokens": 1024})
        await provider.chat(chat_request())
    assert fake.last.body["max_tokens"] == 1024


async def test_api_base_may_include_the_version_segment(fake: FakeAnthropic) -> None:
    async with aiohttp.ClientSession() as http:
        provider = make_provider(fake, http, api_base=f"{fake.url}/v1/")
        await provider.chat(chat_request())
    assert fake.last.path == "/v1/messages"


async def test_tools_and_tool_history_are_translated(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    await provider.chat(
        chat_request(
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "toolu_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18C, sunny"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": "24C, clear"},
            {"role": "user", "content": "Which is warmer?"},
            tools=[WEATHER_TOOL],
            tool_choice="required",
            parallel_tool_calls=False,
        )
    )

    body = fake.last.body
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather for a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Rome?"}]},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_2",
                    "name": "get_weather",
                    "input": {"city": "Rome"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "18C, sunny"}],
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [{"type": "text", "text": "24C, clear"}],
                },
                {"type": "text", "text": "Which is warmer?"},
            ],
        },
    ]


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        (None, None),
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"type": "tool", "name": "get_weather"},
        ),
    ],
)
async def test_tool_choice_mapping(
    fake: FakeAnthropic, provider: AnthropicProvider, tool_choice: Any, expected: Any
) -> None:
    params: dict[str, Any] = {"tools": [WEATHER_TOOL]}
    if tool_choice is not None:
        params["tool_choice"] = tool_choice
    await provider.chat(chat_request(**params))
    assert fake.last.body.get("tool_choice") == expected


async def test_json_schema_response_format_uses_structured_outputs(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    fake.then(text_reply('{"a": 1}'))
    response = await provider.chat(
        chat_request(
            response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
        )
    )
    assert fake.last.body["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert json.loads(response["choices"][0]["message"]["content"]) == {"a": 1}


# --- refusals before any network call -----------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"n": 2}, "n"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"seed": 7}, "seed"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
    ],
)
async def test_unsupported_parameters_are_refused_by_name(
    fake: FakeAnthropic, provider: AnthropicProvider, params: dict[str, Any], param: str
) -> None:
    request = chat_request(**params)
    with pytest.raises(UnsupportedParameterError) as refused:
        provider.check_chat_request(request)
    assert refused.value.param == param
    assert param in refused.value.message
    with pytest.raises(UnsupportedParameterError):
        await provider.chat(request)
    with pytest.raises(UnsupportedParameterError):
        provider.chat_stream(request)
    assert fake.requests == []


async def test_n_of_one_is_accepted(fake: FakeAnthropic, provider: AnthropicProvider) -> None:
    await provider.chat(chat_request(n=1))
    assert "n" not in fake.last.body


async def test_malformed_tool_arguments_are_an_invalid_request(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    bad_call = {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
    request = chat_request(
        {"role": "user", "content": "go"},
        {"role": "assistant", "tool_calls": [bad_call]},
    )
    with pytest.raises(InvalidRequestError, match=r"messages\[1\]"):
        await provider.chat(request)
    assert fake.requests == []


# --- responses ----------------------------------------------------------------------------------


async def test_text_response(fake: FakeAnthropic, provider: AnthropicProvider) -> None:
    fake.then(text_reply("Bonjour!"))
    response = await provider.chat(chat_request())
    assert response["object"] == "chat.completion"
    assert response["model"] == "claude-sonnet-4-5-20250929"
    assert response["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Bonjour!"},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ]


async def test_tool_use_response_becomes_tool_calls(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.then(tool_use_reply("get_weather", {"city": "Paris"}, tool_id="toolu_9"))
    response = await provider.chat(chat_request(tools=[WEATHER_TOOL]))
    choice = response["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["id"] == "toolu_9"
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


async def test_thinking_is_exposed_as_reasoning_content(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    thinking = {"type": "thinking", "thinking": "Paris is in France.", "signature": "sig"}
    fake.then(Reply(content=[thinking, {"type": "text", "text": "France."}]))
    message = (await provider.chat(chat_request()))["choices"][0]["message"]
    assert message["content"] == "France."
    assert message["reasoning_content"] == "Paris is in France."


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
async def test_finish_reasons(
    fake: FakeAnthropic, provider: AnthropicProvider, stop_reason: str, finish_reason: str
) -> None:
    fake.then(text_reply("x", stop_reason=stop_reason), text_reply("x", stop_reason=stop_reason))
    response = await provider.chat(chat_request())
    assert response["choices"][0]["finish_reason"] == finish_reason
    chunks = await collect(provider, chat_request())
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == finish_reason
    assert finishes[:-1] == [None] * (len(finishes) - 1)


async def test_usage_counts_cache_reads_and_writes_as_prompt_tokens(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    usage = {
        "input_tokens": 10,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 20,
        "output_tokens": 7,
    }
    fake.then(text_reply("ok", usage=usage))
    response = await provider.chat(chat_request())
    assert response["usage"] == {
        "prompt_tokens": 130,
        "completion_tokens": 7,
        "total_tokens": 137,
        "prompt_tokens_details": {"cached_tokens": 100},
    }


# --- streaming ----------------------------------------------------------------------------------


async def test_stream_translates_the_event_sequence(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    usage = {"input_tokens": 9, "cache_read_input_tokens": 4, "output_tokens": 12}
    fake.then(text_reply("Hello there, how can I help?", usage=usage))
    chunks = await collect(provider, chat_request(stream=True))

    assert fake.last.body["stream"] is True
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk["id"] for chunk in chunks}) == 1
    first, *middle, finish, last = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(chunk["choices"][0]["delta"]["content"] for chunk in middle)
    assert text == "Hello there, how can I help?"
    assert len(middle) > 1
    assert finish["choices"][0]["delta"] == {}
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert last["choices"] == []
    assert last["usage"] == {
        "prompt_tokens": 13,
        "completion_tokens": 12,
        "total_tokens": 25,
        "prompt_tokens_details": {"cached_tokens": 4},
    }


async def test_stream_tool_call_deltas(fake: FakeAnthropic, provider: AnthropicProvider) -> None:
    fake.then(
        Reply(
            content=[
                {"type": "text", "text": "Checking both."},
                {
                    "type": "tool_use",
                    "id": "toolu_a",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_b",
                    "name": "get_weather",
                    "input": {"city": "Rome"},
                },
            ],
            stop_reason="tool_use",
        )
    )
    chunks = await collect(provider, chat_request(tools=[WEATHER_TOOL]))
    deltas = tool_call_deltas(chunks)

    openers = [delta for delta in deltas if "id" in delta]
    assert openers == [
        {
            "index": 0,
            "id": "toolu_a",
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        },
        {
            "index": 1,
            "id": "toolu_b",
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        },
    ]
    for index, city in ((0, "Paris"), (1, "Rome")):
        fragments = [
            d["function"]["arguments"] for d in deltas if d["index"] == index and "id" not in d
        ]
        assert len(fragments) > 1
        assert all(set(d) == {"index", "function"} for d in deltas if "id" not in d)
        assert json.loads("".join(fragments)) == {"city": city}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == []


async def test_stream_thinking_deltas_become_reasoning_content(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    thinking = {"type": "thinking", "thinking": "Let me think about it.", "signature": "sig"}
    fake.then(Reply(content=[thinking, {"type": "text", "text": "42"}]))
    chunks = await collect(provider, chat_request())
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks if chunk["choices"]]
    reasoning = "".join(delta.get("reasoning_content", "") for delta in deltas)
    assert reasoning == "Let me think about it."
    assert "".join(delta.get("content", "") for delta in deltas) == "42"


async def test_error_event_mid_stream_raises(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.then(text_reply("This answer will not finish.", stream_error="overloaded_error"))
    received: list[Any] = []
    with pytest.raises(UpstreamUnavailableError, match="overloaded_error"):
        async for chunk in provider.chat_stream(chat_request()):
            received.append(chunk)
    assert received[0]["choices"][0]["delta"]["role"] == "assistant"
    assert received[-1]["choices"][0]["delta"]["content"]


async def test_unknown_error_event_mid_stream_is_an_upstream_error(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.then(text_reply("Half an answer", stream_error="api_error"))
    with pytest.raises(UpstreamError, match="mid-stream"):
        await collect(provider, chat_request())


async def test_stream_that_ends_without_message_stop_raises(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.then(text_reply("Cut short", cut_stream=True))
    with pytest.raises(UpstreamConnectionError, match="message_stop"):
        await collect(provider, chat_request())


# --- HTTP errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "error_class"),
    [
        (error_reply(401, "invalid x-api-key"), UpstreamAuthError),
        (error_reply(403, "Your API key does not have permission"), UpstreamAuthError),
        (error_reply(400, "messages: roles must alternate"), InvalidRequestError),
        (
            error_reply(400, "prompt is too long: 210311 tokens > 200000 maximum"),
            ContextWindowExceededError,
        ),
        (
            error_reply(413, "Request exceeds the maximum allowed number of bytes"),
            RequestTooLargeError,
        ),
        (error_reply(429, "Number of request tokens has exceeded your rate limit"), RateLimitError),
        (error_reply(500, "Internal server error"), UpstreamError),
        (error_reply(529, "Overloaded"), UpstreamUnavailableError),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_error_statuses_map_to_keel_errors(
    fake: FakeAnthropic,
    provider: AnthropicProvider,
    reply: Any,
    error_class: type[Exception],
    stream: bool,
) -> None:
    fake.then(reply)
    with pytest.raises(error_class) as raised:
        if stream:
            await collect(provider, chat_request())
        else:
            await provider.chat(chat_request())
    assert type(raised.value) is error_class
    # The message is read out of Anthropic's error body, not dumped raw.
    assert str(raised.value).endswith(f"{reply.message} ({reply.type})")
    assert API_KEY not in str(raised.value)


async def test_rate_limit_keeps_retry_after(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.then(error_reply(429, "Rate limited", retry_after="17"))
    with pytest.raises(RateLimitError) as raised:
        await provider.chat(chat_request())
    assert raised.value.headers == {"retry-after": "17"}


async def test_rejected_key_is_never_echoed(fake: FakeAnthropic) -> None:
    secret = "sk-ant-wrong-and-secret"
    async with aiohttp.ClientSession() as http:
        provider = make_provider(fake, http, api_key=secret)
        with pytest.raises(UpstreamAuthError) as raised:
            await provider.chat(chat_request())
    assert fake.last.headers["x-api-key"] == secret
    assert secret not in str(raised.value)
    assert secret not in json.dumps(raised.value.to_body())
