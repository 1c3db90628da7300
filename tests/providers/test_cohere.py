"""CohereProvider against a fake Cohere v2 server on a real loopback socket."""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from keel.config import DeploymentConfig
from keel.errors import (
    ContextWindowExceededError,
    InvalidRequestError,
    KeelError,
    NotFoundError,
    RateLimitError,
    UnsupportedParameterError,
    UpstreamAuthError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from keel.providers.cohere import CohereProvider
from keel.schemas import ChatCompletionRequest, EmbeddingRequest
from tests.fakes.cohere import FakeCohere, FakeToolCall, Reply, _events
from tests.fakes.server import serve_on_loopback

API_KEY = "co-test"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[FakeCohere, str]]:
    fake = FakeCohere()
    with serve_on_loopback(fake.app) as url:
        yield fake, url


@pytest.fixture
def fake(server: tuple[FakeCohere, str]) -> FakeCohere:
    server[0].reset()
    return server[0]


@pytest.fixture
async def provider(server: tuple[FakeCohere, str]) -> AsyncIterator[CohereProvider]:
    config = DeploymentConfig(
        id="command",
        provider="cohere",
        model="command-a-03-2025",
        api_base=server[1],
        api_key=API_KEY,
    )
    async with aiohttp.ClientSession() as http:
        yield CohereProvider(config, http)


def chat_request(*messages: dict[str, Any], **params: Any) -> ChatCompletionRequest:
    if not messages:
        messages = ({"role": "user", "content": "Hi"},)
    return ChatCompletionRequest.model_validate(
        {"model": "command", "messages": list(messages), **params}
    )


async def collect(provider: CohereProvider, request: ChatCompletionRequest) -> list[dict[str, Any]]:
    return [chunk async for chunk in provider.chat_stream(request)]


def streamed_tool_calls(chunks: list[dict[str, Any]]) -> dict[int, dict[str, str]]:
    """Accumulate tool-call deltas the way OpenAI clients do."""
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for delta in choice["delta"].get("tool_calls", []):
                call = calls.setdefault(delta["index"], {"id": "", "name": "", "arguments": ""})
                call["id"] = delta.get("id", call["id"])
                function = delta.get("function", {})
                call["name"] += function.get("name", "")
                call["arguments"] += function.get("arguments", "")
    return calls


# --- chat: request translation ------------------------------------------------------------------


async def test_system_and_multi_turn_messages_are_translated(
    fake: FakeCohere, provider: CohereProvider
) -> None:
    fake.reply_text("Paris, as before.")
    await provider.chat(
        chat_request(
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And again?"},
        )
    )
    sent = fake.last
    assert sent.path == "/v2/chat"
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"
    assert sent.body["model"] == "command-a-03-2025"
    assert sent.body["stream"] is False
    assert sent.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Answer in English."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And again?"},
    ]


async def test_sampling_parameters_are_mapped(fake: FakeCohere, provider: CohereProvider) -> None:
    await provider.chat(
        chat_request(
            temperature=0.4,
            top_p=0.9,
            max_completion_tokens=64,
            stop="END",
            seed=7,
            frequency_penalty=0.2,
            presence_penalty=0.1,
            response_format={"type": "json_object"},
            user="alice",
        )
    )
    body = fake.last.body
    assert {key: body[key] for key in body if key not in ("model", "messages")} == {
        "stream": False,
        "temperature": 0.4,
        "p": 0.9,
        "max_tokens": 64,
        "stop_sequences": ["END"],
        "seed": 7,
        "frequency_penalty": 0.2,
        "presence_penalty": 0.1,
        "response_format": {"type": "json_object"},
    }


async def test_max_tokens_and_out_of_range_top_p(
    fake: FakeCohere, provider: CohereProvider
) -> None:
    await provider.chat(chat_request(max_tokens=10, top_p=1.0, stop=["a", "b"]))
    assert fake.last.body["max_tokens"] == 10
    assert fake.last.body["p"] == 0.99  # Cohere's ceiling
    assert fake.last.body["stop_sequences"] == ["a", "b"]


async def test_json_schema_response_format(fake: FakeCohere, provider: CohereProvider) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    await provider.chat(
        chat_request(
            response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}
        )
    )
    assert fake.last.body["response_format"] == {"type": "json_object", "json_schema": schema}


async def test_text_response_format_is_left_out(fake: FakeCohere, provider: CohereProvider) -> None:
    await provider.chat(chat_request(response_format={"type": "text"}))
    assert "response_format" not in fake.last.body


@pytest.mark.parametrize(("choice", "wire"), [("required", "REQUIRED"), ("none", "NONE")])
async def test_tools_and_tool_choice(
    fake: FakeCohere, provider: CohereProvider, choice: str, wire: str
) -> None:
    await provider.chat(chat_request(tools=[WEATHER_TOOL], tool_choice=choice))
    assert fake.last.body["tools"] == [WEATHER_TOOL]
    assert fake.last.body["tool_choice"] == wire
    assert "strict_tools" not in fake.last.body


async def test_auto_tool_choice_and_strict_tools(
    fake: FakeCohere, provider: CohereProvider
) -> None:
    strict_tool = {"type": "function", "function": {"name": "ping", "strict": True}}
    await provider.chat(chat_request(tools=[strict_tool], tool_choice="auto"))
    assert "tool_choice" not in fake.last.body
    assert fake.last.body["strict_tools"] is True
    assert fake.last.body["tools"] == [
        {
            "type": "function",
            "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}},
        }
    ]


async def test_forcing_a_specific_function_is_refused(
    fake: FakeCohere, provider: CohereProvider
) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    with pytest.raises(UnsupportedParameterError) as caught:
        await provider.chat(chat_request(tools=[WEATHER_TOOL], tool_choice=choice))
    assert caught.value.param == "tool_choice"
    assert fake.requests == []


async def test_tool_call_history_is_translated(fake: FakeCohere, provider: CohereProvider) -> None:
    await provider.chat(
        chat_request(
            {"role": "user", "content": "Weather in Paris and Oslo?"},
            {
                "role": "assistant",
                "content": "I will look both up.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    },
                    {"id": "call_2", "type": "function", "function": {"name": "get_time"}},
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
            {
                "role": "tool",
                "tool_call_id": "call_2",
                "content": [{"type": "text", "text": "9am"}],
            },
            tools=[WEATHER_TOOL],
        )
    )
    assert fake.last.body["messages"][1:] == [
        {
            "role": "assistant",
            "tool_plan": "I will look both up.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": "{}"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "9am"},
    ]


async def test_image_parts_are_translated(fake: FakeCohere, provider: CohereProvider) -> None:
    image = "data:image/png;base64,iVBORw0KGgo="
    await provider.chat(
        chat_request(
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": image, "detail": "low"}},
                ],
            }
        )
    )
    assert fake.last.body["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": image, "detail": "low"}},
    ]


async def test_audio_parts_are_refused(fake: FakeCohere, provider: CohereProvider) -> None:
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    with pytest.raises(InvalidRequestError, match="input_audio"):
        await provider.chat(chat_request({"role": "user", "content": [audio]}))
    assert fake.requests == []


@pytest.mark.parametrize(
    ("params", "param"),
    [({"n": 2}, "n"), ({"logit_bias": {"1": 2.0}}, "logit_bias"), ({"top_k": 5}, "top_k")],
)
async def test_unmapped_parameters_are_refused_by_name(
    fake: FakeCohere, provider: CohereProvider, params: dict[str, Any], param: str
) -> None:
    with pytest.raises(UnsupportedParameterError) as caught:
        await provider.chat(chat_request(**params))
    assert caught.value.param == param
    assert repr(param) in caught.value.message
    assert caught.value.status_code == 400
    assert fake.requests == []


async def test_unsupported_parameter_fails_the_stream_call_itself(
    fake: FakeCohere, provider: CohereProvider
) -> None:
    with pytest.raises(UnsupportedParameterError) as caught:
        provider.chat_stream(chat_request(n=2, stream=True))
    assert caught.value.param == "n"
    assert fake.requests == []


async def test_parallel_tool_calls_false_is_refused(
    fake: FakeCohere, provider: CohereProvider
) -> None:
    await provider.chat(chat_request(tools=[WEATHER_TOOL], parallel_tool_calls=True))
    with pytest.raises(UnsupportedParameterError) as caught:
        await provider.chat(chat_request(tools=[WEATHER_TOOL], parallel_tool_calls=False))
    assert caught.value.param == "parallel_tool_calls"
    assert len(fake.requests) == 1


# --- chat: response translation -----------------------------------------------------------------


async def test_text_reply(fake: FakeCohere, provider: CohereProvider) -> None:
    fake.reply_text("Paris is the capital.", tokens=(30, 5), billed=(9, 5))
    completion = await provider.chat(chat_request())
    assert completion["object"] == "chat.completion"
    assert completion["model"] == "command-a-03-2025"
    assert completion["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Paris is the capital."},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ]
    assert completion["usage"] == {"prompt_tokens": 30, "completion_tokens": 5, "total_tokens": 35}


async def test_usage_falls_back_to_billed_units(fake: FakeCohere, provider: CohereProvider) -> None:
    fake.reply_text("ok", tokens=None, billed=(9, 2))
    completion = await provider.chat(chat_request())
    assert completion["usage"] == {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}


async def test_tool_call_reply(fake: FakeCohere, provider: CohereProvider) -> None:
    call = FakeToolCall("get_weather", '{"city":"Paris"}', id="get_weather_abc")
    fake.reply_tool_calls(call, tool_plan="I will check the weather.")
    completion = await provider.chat(chat_request(tools=[WEATHER_TOOL]))
    choice = completion["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "get_weather_abc",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    }


@pytest.mark.parametrize(
    ("cohere", "openai"),
    [("COMPLETE", "stop"), ("STOP_SEQUENCE", "stop"), ("MAX_TOKENS", "length")],
)
async def test_finish_reasons(
    fake: FakeCohere, provider: CohereProvider, cohere: str, openai: str
) -> None:
    fake.reply_text("a b c", finish_reason=cohere)
    completion = await provider.chat(chat_request())
    assert completion["choices"][0]["finish_reason"] == openai
    fake.reply_text("a b c", finish_reason=cohere)
    chunks = await collect(provider, chat_request(stream=True))
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == openai


@pytest.mark.parametrize(
    ("cohere", "error_class"), [("ERROR", UpstreamError), ("TIMEOUT", UpstreamTimeoutError)]
)
async def test_error_finish_reasons_raise(
    fake: FakeCohere, provider: CohereProvider, cohere: str, error_class: type[UpstreamError]
) -> None:
    fake.reply(Reply(text="partial", finish_reason=cohere, error="generation failed"))
    with pytest.raises(error_class, match=cohere) as caught:
        await provider.chat(chat_request())
    assert type(caught.value) is error_class
    fake.reply(Reply(text="partial", finish_reason=cohere, error="generation failed"))
    with pytest.raises(error_class, match="generation failed"):
        await collect(provider, chat_request(stream=True))


# --- streaming ----------------------------------------------------------------------------------


async def test_stream_text(fake: FakeCohere, provider: CohereProvider) -> None:
    fake.reply_text("Hello there, streaming world.", tokens=(40, 6))
    chunks = await collect(provider, chat_request(stream=True))

    assert fake.last.body["stream"] is True
    assert fake.last.headers["accept"] == "text/event-stream"
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hello there, streaming world."
    assert len([c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]) > 1

    finish, last = chunks[-2], chunks[-1]
    assert finish["choices"][0] == {
        "index": 0,
        "delta": {},
        "finish_reason": "stop",
        "logprobs": None,
    }
    assert last["choices"] == []
    assert last["usage"] == {"prompt_tokens": 40, "completion_tokens": 6, "total_tokens": 46}


async def test_stream_usage_chunk_falls_back_to_billed_units(
    fake: FakeCohere, provider: CohereProvider
) -> None:
    fake.reply_text("ok", tokens=None, billed=(3, 1))
    chunks = await collect(provider, chat_request(stream=True))
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}


async def test_stream_tool_calls(fake: FakeCohere, provider: CohereProvider) -> None:
    weather = FakeToolCall("get_weather", '{"city": "Paris", "unit": "celsius"}', id="call_w")
    time_call = FakeToolCall("get_time", '{"zone": "Europe/Oslo"}', id="call_t")
    fake.reply_tool_calls(weather, time_call, tool_plan="I will look up both.")
    chunks = await collect(provider, chat_request(tools=[WEATHER_TOOL], stream=True))

    tool_deltas = [
        delta
        for chunk in chunks
        for choice in chunk["choices"]
        for delta in choice["delta"].get("tool_calls", [])
    ]
    first_of_each = [d for d in tool_deltas if "id" in d]
    assert first_of_each == [
        {
            "index": 0,
            "id": "call_w",
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        },
        {
            "index": 1,
            "id": "call_t",
            "type": "function",
            "function": {"name": "get_time", "arguments": ""},
        },
    ]
    fragments = [d for d in tool_deltas if "id" not in d]
    assert len(fragments) > 2
    assert all(
        set(d) == {"index", "function"} and set(d["function"]) == {"arguments"} for d in fragments
    )
    assert streamed_tool_calls(chunks) == {
        0: {"id": "call_w", "name": "get_weather", "arguments": weather.arguments},
        1: {"id": "call_t", "name": "get_time", "arguments": time_call.arguments},
    }
    # The tool plan is Cohere's reasoning, not reply text.
    assert not any(c["choices"] and c["choices"][0]["delta"].get("content") for c in chunks)
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == [] and "usage" in chunks[-1]


async def test_stream_tool_calls_after_text_are_numbered_from_zero(
    fake: FakeCohere, provider: CohereProvider
) -> None:
    # The fake numbers tool-call events after the text block (index 1), as Cohere may.
    call = FakeToolCall("get_weather", '{"city":"Oslo"}', id="call_o")
    fake.reply(Reply(text="Checking.", tool_calls=[call], finish_reason="TOOL_CALL"))
    chunks = await collect(provider, chat_request(tools=[WEATHER_TOOL], stream=True))
    assert streamed_tool_calls(chunks) == {
        0: {"id": "call_o", "name": "get_weather", "arguments": '{"city":"Oslo"}'}
    }


@pytest.mark.parametrize("abort", [False, True], ids=["clean-end", "dropped-connection"])
async def test_stream_cut_before_message_end_raises(
    fake: FakeCohere, provider: CohereProvider, abort: bool
) -> None:
    fake.reply_cut("one two three four five", after_events=4, abort=abort)
    received: list[dict[str, Any]] = []
    with pytest.raises(UpstreamConnectionError):
        async for chunk in provider.chat_stream(chat_request(stream=True)):
            received.append(chunk)
    assert received[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(chunk["choices"] for chunk in received)  # no finish, no usage chunk


# --- errors -------------------------------------------------------------------------------------


ERROR_CASES = [
    (400, "invalid request: temperature must be non-negative", InvalidRequestError),
    (400, "too many tokens: input token count exceeds the limit", ContextWindowExceededError),
    (401, "invalid api token", UpstreamAuthError),
    (404, "model 'command-z' not found", NotFoundError),
    (422, "invalid request: messages must not be empty", InvalidRequestError),
    (429, "You are using a Trial key, which is limited to 10 API calls / minute.", RateLimitError),
    (500, "internal server error, this has been reported to our developers", UpstreamError),
    (503, "service unavailable", UpstreamUnavailableError),
]


@pytest.mark.parametrize(("status", "message", "error_class"), ERROR_CASES)
@pytest.mark.parametrize("streaming", [False, True], ids=["chat", "stream"])
async def test_http_errors_become_keel_errors(
    fake: FakeCohere,
    provider: CohereProvider,
    status: int,
    message: str,
    error_class: type[KeelError],
    streaming: bool,
) -> None:
    fake.reply_error(status, message)
    with pytest.raises(KeelError) as caught:
        if streaming:
            await collect(provider, chat_request(stream=True))
        else:
            await provider.chat(chat_request())
    assert type(caught.value) is error_class
    assert message in caught.value.message
    assert API_KEY not in caught.value.message
    assert API_KEY not in str(caught.value.to_body())


async def test_rate_limit_keeps_retry_after(fake: FakeCohere, provider: CohereProvider) -> None:
    fake.reply_error(429, "too many requests", headers={"retry-after": "7"})
    with pytest.raises(RateLimitError) as caught:
        await provider.chat(chat_request())
    assert caught.value.headers == {"retry-after": "7"}


async def test_embed_errors_become_keel_errors(fake: FakeCohere, provider: CohereProvider) -> None:
    fake.reply_error(401, "invalid api token")
    with pytest.raises(UpstreamAuthError) as caught:
        await provider.embed(EmbeddingRequest(model="command", input="hello"))
    assert API_KEY not in caught.value.message


async def test_unreachable_upstream(provider: CohereProvider) -> None:
    provider.config = provider.config.model_copy(update={"api_base": "http://127.0.0.1:9"})
    with pytest.raises(UpstreamConnectionError) as caught:
        await provider.chat(chat_request())
    assert API_KEY not in caught.value.message


# --- embeddings ---------------------------------------------------------------------------------


async def test_embeddings_float(fake: FakeCohere, provider: CohereProvider) -> None:
    fake.reply_embeddings([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    result = await provider.embed(
        EmbeddingRequest(model="command", input=["first text", "second one here"])
    )
    sent = fake.last
    assert sent.path == "/v2/embed"
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"
    assert sent.body == {
        "model": "command-a-03-2025",
        "texts": ["first text", "second one here"],
        "input_type": "search_document",
        "embedding_types": ["float"],
    }
    assert result == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]},
            {"object": "embedding", "index": 1, "embedding": [0.4, 0.5, 0.6]},
        ],
        "model": "command-a-03-2025",
        "usage": {"prompt_tokens": 5, "total_tokens": 5},
    }


async def test_embeddings_base64(fake: FakeCohere, provider: CohereProvider) -> None:
    vectors = [[0.25, -1.5, 3.0], [0.1, 0.2, 0.3]]
    fake.reply_embeddings(vectors)
    result = await provider.embed(
        EmbeddingRequest(model="command", input=["a", "b"], encoding_format="base64")
    )
    assert "encoding_format" not in fake.last.body
    for item, vector in zip(result["data"], vectors, strict=True):
        raw = base64.b64decode(item["embedding"])
        decoded = struct.unpack(f"<{len(vector)}f", raw)
        assert decoded == pytest.approx(vector, rel=1e-6)
    assert struct.unpack("<3f", base64.b64decode(result["data"][0]["embedding"])) == (
        0.25,
        -1.5,
        3.0,
    )


async def test_embeddings_input_type_and_dimensions(
    fake: FakeCohere, provider: CohereProvider
) -> None:
    options = {"input_type": "search_query"}
    provider.config = provider.config.model_copy(update={"options": options})
    await provider.embed(EmbeddingRequest(model="command", input="query", dimensions=512))
    assert fake.last.body["input_type"] == "search_query"
    assert fake.last.body["output_dimension"] == 512


async def test_embeddings_are_batched_at_cohere_limit(
    fake: FakeCohere, provider: CohereProvider
) -> None:
    texts = [f"text {i}" for i in range(100)]
    result = await provider.embed(EmbeddingRequest(model="command", input=texts))
    assert [len(r.body["texts"]) for r in fake.requests] == [96, 4]
    assert [item["index"] for item in result["data"]] == list(range(100))
    # The fake derives each vector from its text's position within its batch.
    assert result["data"][97]["embedding"] == [7.0, 1.0, 0.5]  # "text 97"
    assert result["usage"] == {"prompt_tokens": 200, "total_tokens": 200}


@pytest.mark.parametrize("tokens", [[1, 2, 3], [[1, 2], [3]]])
async def test_token_id_input_is_refused(
    fake: FakeCohere, provider: CohereProvider, tokens: list[Any]
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await provider.embed(EmbeddingRequest(model="command", input=tokens))
    assert caught.value.param == "input"
    assert fake.requests == []


def test_capabilities() -> None:
    assert CohereProvider.name == "cohere"
    assert CohereProvider.supports_embeddings is True
    assert CohereProvider.required_config == ("api_key",)
    assert CohereProvider.chat_params is not None
    assert "n" not in CohereProvider.chat_params
    assert {"seed", "response_format", "tools", "tool_choice"} <= CohereProvider.chat_params


def test_fake_stream_event_order() -> None:
    call = FakeToolCall("f", "{}", id="c")
    kinds = [
        e["type"] for e in _events(Reply(text="hi there", tool_plan="plan", tool_calls=[call]))
    ]
    assert kinds == [
        "message-start",
        "tool-plan-delta",
        "content-start",
        "content-delta",
        "content-delta",
        "content-end",
        "tool-call-start",
        "tool-call-delta",
        "tool-call-end",
        "message-end",
    ]
