"""GeminiProvider against a fake Gemini API on a real loopback socket."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from keel.config import DeploymentConfig
from keel.errors import (
    ConfigError,
    ContextWindowExceededError,
    InvalidRequestError,
    KeelError,
    RateLimitError,
    UnsupportedParameterError,
    UpstreamAuthError,
    UpstreamBadResponseError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamUnavailableError,
)
from keel.providers import load_provider_class
from keel.providers.gemini import GeminiProvider
from keel.schemas import ChatCompletionRequest
from tests.fakes.gemini import (
    FakeGemini,
    Reply,
    blocked_reply,
    candidate,
    error_reply,
    function_call,
    response,
    stream_reply,
    text_reply,
    usage_metadata,
)
from tests.fakes.server import serve_on_loopback

API_KEY = "AIza-test"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[FakeGemini, str]]:
    # One server for the module: starting and stopping uvicorn per test costs more than the tests.
    fake = FakeGemini(api_key=API_KEY)
    with serve_on_loopback(fake.app) as url:
        yield fake, url


@pytest.fixture
def fake(served: tuple[FakeGemini, str]) -> FakeGemini:
    served[0].reset()
    return served[0]


@pytest.fixture
def base_url(served: tuple[FakeGemini, str]) -> str:
    return served[1]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def make_provider(base_url: str, http: aiohttp.ClientSession, **config: Any) -> GeminiProvider:
    settings: dict[str, Any] = {
        "id": "gemini-flash",
        "provider": "gemini",
        "model": "gemini-2.5-flash",
        "api_base": base_url,
        "api_key": API_KEY,
        **config,
    }
    return GeminiProvider(DeploymentConfig(**settings), http)


@pytest.fixture
def provider(base_url: str, http: aiohttp.ClientSession) -> GeminiProvider:
    return make_provider(base_url, http)


def chat_request(**fields: Any) -> ChatCompletionRequest:
    fields.setdefault("messages", [{"role": "user", "content": "Hi"}])
    return ChatCompletionRequest.model_validate({"model": "gemini-flash", **fields})


async def collect(provider: GeminiProvider, request: ChatCompletionRequest) -> list[dict[str, Any]]:
    return [chunk async for chunk in provider.chat_stream(request)]


def test_registered_under_its_name() -> None:
    assert load_provider_class("gemini") is GeminiProvider
    assert GeminiProvider.required_config == ("api_key",)


# Request translation ------------------------------------------------------------------------


async def test_system_and_turns_are_translated(fake: FakeGemini, provider: GeminiProvider) -> None:
    fake.reply(text_reply("Paris."))
    completion = await provider.chat(
        chat_request(
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": "Answer in English."},
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi! How can I help?"},
                {"role": "user", "content": "Capital of France?"},
                {"role": "user", "content": [{"type": "text", "text": "One word."}]},
            ]
        )
    )

    sent = fake.last_request
    assert sent.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert sent.body["systemInstruction"] == {
        "parts": [{"text": "Be brief."}, {"text": "Answer in English."}]
    }
    assert sent.body["contents"] == [
        {"role": "user", "parts": [{"text": "Hello"}]},
        {"role": "model", "parts": [{"text": "Hi! How can I help?"}]},
        {"role": "user", "parts": [{"text": "Capital of France?"}, {"text": "One word."}]},
    ]
    assert "generationConfig" not in sent.body
    assert completion["object"] == "chat.completion"
    assert completion["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Paris."},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ]


async def test_api_key_travels_in_a_header_only(fake: FakeGemini, provider: GeminiProvider) -> None:
    await provider.chat(chat_request())
    sent = fake.last_request
    assert sent.headers["x-goog-api-key"] == API_KEY
    assert sent.query == {}
    assert API_KEY not in sent.path


async def test_image_data_url_becomes_inline_data(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    image = "data:image/png;base64,iVBORw0KGgo="
    await provider.chat(
        chat_request(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": image}},
                    ],
                }
            ]
        )
    )
    assert fake.last_request.body["contents"][0]["parts"] == [
        {"text": "What is this?"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
    ]


async def test_remote_image_url_is_refused_before_sending(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    part = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    with pytest.raises(InvalidRequestError) as caught:
        await provider.chat(chat_request(messages=[{"role": "user", "content": [part]}]))
    assert caught.value.param == "messages"
    assert fake.requests == []


async def test_generation_config_mapping(fake: FakeGemini, provider: GeminiProvider) -> None:
    await provider.chat(
        chat_request(
            temperature=0.3,
            top_p=0.9,
            max_completion_tokens=256,
            stop=["END", "STOP"],
            seed=42,
            presence_penalty=0.5,
            frequency_penalty=-0.5,
        )
    )
    assert fake.last_request.body["generationConfig"] == {
        "temperature": 0.3,
        "topP": 0.9,
        "maxOutputTokens": 256,
        "stopSequences": ["END", "STOP"],
        "seed": 42,
        "presencePenalty": 0.5,
        "frequencyPenalty": -0.5,
    }


async def test_max_tokens_and_single_stop(fake: FakeGemini, provider: GeminiProvider) -> None:
    await provider.chat(chat_request(max_tokens=64, stop="\n\n"))
    assert fake.last_request.body["generationConfig"] == {
        "maxOutputTokens": 64,
        "stopSequences": ["\n\n"],
    }


async def test_deployment_options_extend_the_request(
    fake: FakeGemini, base_url: str, http: aiohttp.ClientSession
) -> None:
    safety = [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}]
    provider = make_provider(
        base_url,
        http,
        options={
            "generation_config": {"topK": 40, "temperature": 1.0},
            "safety_settings": safety,
        },
    )
    await provider.chat(chat_request(temperature=0.2))
    body = fake.last_request.body
    assert body["generationConfig"] == {"topK": 40, "temperature": 0.2}
    assert body["safetySettings"] == safety


async def test_n_two_gives_two_choices(fake: FakeGemini, provider: GeminiProvider) -> None:
    fake.reply(Reply(response(candidate("Heads", index=0), candidate("Tails", index=1))))
    completion = await provider.chat(chat_request(n=2))
    assert fake.last_request.body["generationConfig"] == {"candidateCount": 2}
    assert [choice["index"] for choice in completion["choices"]] == [0, 1]
    assert [choice["message"]["content"] for choice in completion["choices"]] == [
        "Heads",
        "Tails",
    ]


async def test_json_object_mode(fake: FakeGemini, provider: GeminiProvider) -> None:
    fake.reply(text_reply('{"ok": true}'))
    completion = await provider.chat(chat_request(response_format={"type": "json_object"}))
    assert fake.last_request.body["generationConfig"] == {"responseMimeType": "application/json"}
    assert completion["choices"][0]["message"]["content"] == '{"ok": true}'


JSON_SCHEMA_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "city",
        "schema": {
            "type": "object",
            "properties": {"name": {"type": "string"}},
            "required": ["name"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}


async def test_json_schema_mode(fake: FakeGemini, provider: GeminiProvider) -> None:
    await provider.chat(chat_request(response_format=JSON_SCHEMA_FORMAT))
    assert fake.last_request.body["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseJsonSchema": JSON_SCHEMA_FORMAT["json_schema"]["schema"],  # type: ignore[index]
    }


async def test_text_response_format_sends_nothing(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    await provider.chat(chat_request(response_format={"type": "text"}))
    assert "generationConfig" not in fake.last_request.body


async def test_openapi_schema_format_for_older_models(
    fake: FakeGemini, base_url: str, http: aiohttp.ClientSession
) -> None:
    provider = make_provider(base_url, http, options={"schema_format": "openapi"})
    await provider.chat(chat_request(response_format=JSON_SCHEMA_FORMAT, tools=[WEATHER_TOOL]))
    body = fake.last_request.body
    assert "responseSchema" in body["generationConfig"]
    assert "responseJsonSchema" not in body["generationConfig"]
    declaration = body["tools"][0]["functionDeclarations"][0]
    assert declaration["parameters"] == WEATHER_TOOL["function"]["parameters"]  # type: ignore[index]


async def test_unknown_schema_format_is_a_config_error(
    base_url: str, http: aiohttp.ClientSession
) -> None:
    with pytest.raises(ConfigError, match="schema_format"):
        make_provider(base_url, http, options={"schema_format": "yaml"})


@pytest.mark.parametrize(
    ("tool_choice", "calling_config"),
    [
        (None, None),
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"mode": "ANY", "allowedFunctionNames": ["get_weather"]},
        ),
    ],
)
async def test_tools_and_tool_choice(
    fake: FakeGemini,
    provider: GeminiProvider,
    tool_choice: Any,
    calling_config: dict[str, Any] | None,
) -> None:
    fields: dict[str, Any] = {"tools": [WEATHER_TOOL]}
    if tool_choice is not None:
        fields["tool_choice"] = tool_choice
    await provider.chat(chat_request(**fields))
    body = fake.last_request.body
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Current weather in a city.",
                    "parametersJsonSchema": WEATHER_TOOL["function"]["parameters"],  # type: ignore[index]
                }
            ]
        }
    ]
    if calling_config is None:
        assert "toolConfig" not in body
    else:
        assert body["toolConfig"] == {"functionCallingConfig": calling_config}


async def test_malformed_tool_choice_is_refused(provider: GeminiProvider) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await provider.chat(chat_request(tools=[WEATHER_TOOL], tool_choice={"type": "custom"}))
    assert caught.value.param == "tool_choice"


async def test_tool_history_is_translated(fake: FakeGemini, provider: GeminiProvider) -> None:
    signature = {"google": {"thought_signature": "c2lnbmF0dXJl"}}
    await provider.chat(
        chat_request(
            tools=[WEATHER_TOOL],
            messages=[
                {"role": "user", "content": "Weather in Paris and Oslo?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_paris",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                            "extra_content": signature,
                        },
                        {
                            "id": "call_oslo",
                            "type": "function",
                            "function": {"name": "lookup_city", "arguments": '{"city":"Oslo"}'},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "call_oslo", "content": "not JSON"},
                {"role": "tool", "tool_call_id": "call_paris", "content": '{"temp_c": 21}'},
            ],
        )
    )
    assert fake.last_request.body["contents"] == [
        {"role": "user", "parts": [{"text": "Weather in Paris and Oslo?"}]},
        {
            "role": "model",
            "parts": [
                {
                    "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                    "thoughtSignature": "c2lnbmF0dXJl",
                },
                {"functionCall": {"name": "lookup_city", "args": {"city": "Oslo"}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "lookup_city", "response": {"result": "not JSON"}}},
                {"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}},
            ],
        },
    ]


async def test_tool_result_for_an_unknown_call_is_refused(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    with pytest.raises(InvalidRequestError, match="call_missing") as caught:
        await provider.chat(
            chat_request(
                messages=[
                    {"role": "user", "content": "Hi"},
                    {"role": "tool", "tool_call_id": "call_missing", "content": "42"},
                ]
            )
        )
    assert caught.value.param == "messages"
    assert fake.requests == []


async def test_tool_call_arguments_must_be_an_object(provider: GeminiProvider) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "[1, 2]"}}
    with pytest.raises(InvalidRequestError, match="JSON object"):
        await provider.chat(chat_request(messages=[{"role": "assistant", "tool_calls": [call]}]))


async def test_unsupported_parameter_is_refused_by_name(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    with pytest.raises(UnsupportedParameterError, match="logit_bias") as caught:
        await provider.chat(chat_request(logit_bias={"50256": -100}))
    assert caught.value.param == "logit_bias"
    # A stream is refused when it is asked for, before a byte is streamed.
    with pytest.raises(UnsupportedParameterError):
        provider.chat_stream(chat_request(stream=True, logprobs=True))
    assert fake.requests == []


async def test_api_base_with_version_and_prefixed_model(
    fake: FakeGemini, base_url: str, http: aiohttp.ClientSession
) -> None:
    provider = make_provider(
        base_url, http, api_base=f"{base_url}/v1beta/", model="models/gemini-2.5-pro"
    )
    await provider.chat(chat_request())
    assert fake.last_request.path == "/v1beta/models/gemini-2.5-pro:generateContent"


# Response translation -----------------------------------------------------------------------


async def test_function_call_becomes_tool_call(fake: FakeGemini, provider: GeminiProvider) -> None:
    fake.reply(
        Reply(
            response(
                candidate(
                    "Let me check.",
                    function_call("get_weather", {"city": "Paris"}, signature="c2ln"),
                    function_call("get_weather", {"city": "Oslo"}),
                )
            )
        )
    )
    completion = await provider.chat(chat_request(tools=[WEATHER_TOOL]))
    choice = completion["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me check."
    first, second = choice["message"]["tool_calls"]
    assert first["type"] == "function"
    assert first["function"]["name"] == "get_weather"
    assert orjson.loads(first["function"]["arguments"]) == {"city": "Paris"}
    assert first["extra_content"] == {"google": {"thought_signature": "c2ln"}}
    assert "extra_content" not in second
    assert first["id"].startswith("call_")
    assert first["id"] != second["id"]


async def test_only_function_calls_leaves_content_null(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    fake.reply(Reply(response(candidate(function_call("ping", {})))))
    completion = await provider.chat(chat_request())
    message = completion["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"][0]["function"]["arguments"] == "{}"


@pytest.mark.parametrize(
    ("gemini_reason", "openai_reason"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("OTHER", "stop"),
    ],
)
async def test_finish_reasons(
    fake: FakeGemini, provider: GeminiProvider, gemini_reason: str, openai_reason: str
) -> None:
    fake.reply(text_reply("partial", finish=gemini_reason))
    completion = await provider.chat(chat_request())
    assert completion["choices"][0]["finish_reason"] == openai_reason


async def test_thoughts_are_left_out_and_usage_is_complete(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    thought = {"text": "The user wants a greeting.", "thought": True}
    fake.reply(
        Reply(
            response(
                candidate(thought, "Hello!"),
                usage=usage_metadata(100, 20, thoughts=30, cached=60),
            )
        )
    )
    completion = await provider.chat(chat_request())
    assert completion["choices"][0]["message"]["content"] == "Hello!"
    assert completion["model"] == "gemini-2.5-flash"
    assert completion["usage"] == {
        "prompt_tokens": 100,
        "completion_tokens": 50,
        "total_tokens": 150,
        "prompt_tokens_details": {"cached_tokens": 60},
        "completion_tokens_details": {"reasoning_tokens": 30},
    }


async def test_blocked_prompt_is_a_content_policy_error(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    fake.reply(blocked_reply("SAFETY"))
    with pytest.raises(InvalidRequestError) as caught:
        await provider.chat(chat_request())
    assert caught.value.code == "content_policy_violation"
    assert "SAFETY" in caught.value.message


async def test_no_candidates_without_a_block_is_a_bad_response(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    fake.reply(Reply(response()))
    with pytest.raises(UpstreamBadResponseError):
        await provider.chat(chat_request())


# Errors -------------------------------------------------------------------------------------

ERROR_CASES = [
    (400, InvalidRequestError, "INVALID_ARGUMENT"),
    (403, UpstreamAuthError, "PERMISSION_DENIED"),
    (429, RateLimitError, "RESOURCE_EXHAUSTED"),
    (500, UpstreamError, "INTERNAL"),
    (503, UpstreamUnavailableError, "UNAVAILABLE"),
]


@pytest.mark.parametrize(("status", "error_class", "status_name"), ERROR_CASES)
async def test_error_statuses(
    fake: FakeGemini,
    provider: GeminiProvider,
    status: int,
    error_class: type[KeelError],
    status_name: str,
) -> None:
    fake.reply(error_reply(status))
    with pytest.raises(KeelError) as caught:
        await provider.chat(chat_request())
    assert type(caught.value) is error_class
    assert status_name in caught.value.message
    assert API_KEY not in caught.value.message


@pytest.mark.parametrize(("status", "error_class", "status_name"), ERROR_CASES)
async def test_error_statuses_when_streaming(
    fake: FakeGemini,
    provider: GeminiProvider,
    status: int,
    error_class: type[KeelError],
    status_name: str,
) -> None:
    fake.reply(error_reply(status))
    with pytest.raises(KeelError) as caught:
        await collect(provider, chat_request(stream=True))
    assert type(caught.value) is error_class
    assert status_name in caught.value.message


async def test_rejected_api_key_is_an_upstream_auth_error(
    fake: FakeGemini, base_url: str, http: aiohttp.ClientSession
) -> None:
    provider = make_provider(base_url, http, api_key="AIza-wrong-key")
    with pytest.raises(UpstreamAuthError) as caught:
        await provider.chat(chat_request())
    assert "API key not valid" in caught.value.message
    assert "AIza-wrong-key" not in caught.value.message
    with pytest.raises(UpstreamAuthError):
        await collect(provider, chat_request(stream=True))


async def test_overlong_prompt_is_a_context_window_error(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    message = (
        "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."
    )
    fake.reply(error_reply(400, message))
    with pytest.raises(ContextWindowExceededError):
        await provider.chat(chat_request())


# Streaming ----------------------------------------------------------------------------------


async def test_stream_chunks_end_with_usage(fake: FakeGemini, provider: GeminiProvider) -> None:
    fake.reply(stream_reply(["Hel", "lo", "!"], usage=usage_metadata(8, 3, thoughts=4)))
    chunks = await collect(provider, chat_request(stream=True))

    sent = fake.last_request
    assert sent.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert sent.query == {"alt": "sse"}
    assert "stream" not in sent.body
    assert {chunk["id"] for chunk in chunks} == {chunks[0]["id"]}
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks[:-1]]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
        {"content": "lo"},
        {"content": "!"},
        {},
    ]
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks[:-1]] == [
        None,
        None,
        None,
        None,
        "stop",
    ]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 8,
        "completion_tokens": 7,
        "total_tokens": 15,
        "completion_tokens_details": {"reasoning_tokens": 4},
    }


async def test_stream_function_call(fake: FakeGemini, provider: GeminiProvider) -> None:
    events = [
        response(candidate(function_call("get_weather", {"city": "Paris"}), finish=None)),
        response(candidate(function_call("get_weather", {"city": "Oslo"}), finish="STOP")),
    ]
    fake.reply(Reply(events=events))
    chunks = await collect(provider, chat_request(stream=True, tools=[WEATHER_TOOL]))
    calls = [
        call
        for chunk in chunks
        for choice in chunk["choices"]
        for call in choice["delta"].get("tool_calls", [])
    ]
    assert [call["index"] for call in calls] == [0, 1]
    assert [orjson.loads(call["function"]["arguments"]) for call in calls] == [
        {"city": "Paris"},
        {"city": "Oslo"},
    ]
    assert all(call["id"] and call["function"]["name"] == "get_weather" for call in calls)
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == []


async def test_stream_two_candidates(fake: FakeGemini, provider: GeminiProvider) -> None:
    fake.reply(
        Reply(
            events=[
                response(
                    candidate("A", index=0, finish=None), candidate("B", index=1, finish=None)
                ),
                response(candidate("a", index=0), candidate("b", index=1)),
            ]
        )
    )
    chunks = await collect(provider, chat_request(stream=True, n=2))
    text: dict[int, str] = {0: "", 1: ""}
    finished = []
    for chunk in chunks:
        for choice in chunk["choices"]:
            text[choice["index"]] += choice["delta"].get("content", "")
            if choice["finish_reason"]:
                finished.append(choice["index"])
    assert text == {0: "Aa", 1: "Bb"}
    assert sorted(finished) == [0, 1]


async def test_stream_leaves_thoughts_out(fake: FakeGemini, provider: GeminiProvider) -> None:
    thought = {"text": "Thinking...", "thought": True}
    fake.reply(
        Reply(events=[response(candidate(thought, finish=None)), response(candidate("Done."))])
    )
    chunks = await collect(provider, chat_request(stream=True))
    contents = [chunk["choices"][0]["delta"].get("content") for chunk in chunks[:-1]]
    assert "Thinking..." not in contents
    assert "Done." in contents


async def test_stream_cut_before_finish_raises(fake: FakeGemini, provider: GeminiProvider) -> None:
    fake.reply(stream_reply(["Once upon", " a time"], finish=None))
    received: list[dict[str, Any]] = []
    with pytest.raises(UpstreamBadResponseError):
        async for chunk in provider.chat_stream(chat_request(stream=True)):
            received.append(chunk)
    assert [chunk["choices"][0]["delta"].get("content") for chunk in received] == [
        "",
        "Once upon",
        " a time",
    ]


async def test_stream_dropped_connection_raises(fake: FakeGemini, provider: GeminiProvider) -> None:
    fake.reply(stream_reply(["Once upon"], finish=None, abort=True))
    with pytest.raises(UpstreamConnectionError):
        await collect(provider, chat_request(stream=True))


async def test_stream_error_event_raises(fake: FakeGemini, provider: GeminiProvider) -> None:
    error = error_reply(500).body
    fake.reply(Reply(events=[response(candidate("Hi", finish=None)), error]))
    with pytest.raises(UpstreamError, match="mid-stream"):
        await collect(provider, chat_request(stream=True))


async def test_stream_blocked_prompt(fake: FakeGemini, provider: GeminiProvider) -> None:
    fake.reply(blocked_reply("PROHIBITED_CONTENT"))
    with pytest.raises(InvalidRequestError) as caught:
        await collect(provider, chat_request(stream=True))
    assert caught.value.code == "content_policy_violation"


async def test_stream_safety_finish_is_content_filter(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    fake.reply(stream_reply(["I can"], finish="SAFETY"))
    chunks = await collect(provider, chat_request(stream=True))
    assert chunks[-2]["choices"][0]["finish_reason"] == "content_filter"
    assert "usage" in chunks[-1]
