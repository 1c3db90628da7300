"""OpenAICompatibleProvider and AzureOpenAIProvider against a fake OpenAI server on loopback."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from keel.config import DeploymentConfig
from keel.errors import (
    ContextWindowExceededError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    UpstreamAuthError,
    UpstreamBadResponseError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from keel.providers import load_provider_class
from keel.providers.openai_compat import AzureOpenAIProvider, OpenAICompatibleProvider
from keel.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from tests.fakes.openai import (
    CutStream,
    ErrorReply,
    FakeOpenAI,
    Hang,
    Malformed,
    RawStream,
    Reply,
    StreamError,
)

# The fake server is the session-wide one from tests/conftest.py (`fake_openai`, reset per test).

API_KEY = "sk-test-4f8a1c9e2b7d"
UPSTREAM_MODEL = "gpt-4o-2024-08-06"
AZURE_DEPLOYMENT = "prod-gpt4o"
AZURE_VERSION = "2024-10-21"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"default": None}},
            "required": ["city"],
        },
    },
}


@pytest.fixture
def server(fake_openai_url: str) -> str:
    return fake_openai_url.removesuffix("/v1")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def make_provider(
    http: aiohttp.ClientSession, api_base: str, **overrides: Any
) -> OpenAICompatibleProvider:
    settings: dict[str, Any] = {
        "id": "smart",
        "provider": "openai",
        "model": UPSTREAM_MODEL,
        "api_base": api_base,
        "api_key": API_KEY,
        **overrides,
    }
    return OpenAICompatibleProvider(DeploymentConfig(**settings), http)


def make_azure(http: aiohttp.ClientSession, server: str, **overrides: Any) -> AzureOpenAIProvider:
    settings: dict[str, Any] = {
        "id": "smart",
        "provider": "azure",
        "model": AZURE_DEPLOYMENT,
        "api_base": f"{server}/",
        "api_key": API_KEY,
        "api_version": AZURE_VERSION,
        **overrides,
    }
    return AzureOpenAIProvider(DeploymentConfig(**settings), http)


@pytest.fixture
def provider(http: aiohttp.ClientSession, fake_openai_url: str) -> OpenAICompatibleProvider:
    return make_provider(http, fake_openai_url)


def chat_request(*messages: dict[str, Any], **params: Any) -> ChatCompletionRequest:
    if not messages:
        messages = ({"role": "user", "content": "Hi there"},)
    return ChatCompletionRequest.model_validate(
        {"model": "smart", "messages": list(messages), **params}
    )


async def collect(stream: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [chunk async for chunk in stream]


def content_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(
        choice["delta"].get("content") or "" for chunk in chunks for choice in chunk["choices"]
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- registration -------------------------------------------------------------------------------


def test_registered_names() -> None:
    assert load_provider_class("openai") is OpenAICompatibleProvider
    assert load_provider_class("openai_compatible") is OpenAICompatibleProvider
    assert load_provider_class("azure") is AzureOpenAIProvider
    assert OpenAICompatibleProvider.chat_params is None
    assert OpenAICompatibleProvider.supports_completions
    assert OpenAICompatibleProvider.supports_embeddings
    assert AzureOpenAIProvider.required_config == ("api_base", "api_key")


# --- requests -----------------------------------------------------------------------------------


async def test_chat_request_is_forwarded_verbatim_with_the_upstream_model(
    fake_openai: FakeOpenAI, provider: OpenAICompatibleProvider
) -> None:
    sent = {
        "model": "smart",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather here?"},
                    {"type": "image_url", "image_url": {"url": "https://x/a.png", "detail": "low"}},
                ],
            },
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "-3C"},
        ],
        "temperature": 0.2,
        "max_completion_tokens": 50,
        "stop": ["END"],
        "seed": 7,
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": True},
        },
        # Not OpenAI's: vLLM's sampling and guided decoding parameters.
        "top_k": 40,
        "repetition_penalty": 1.1,
        "guided_json": {"type": "object", "default": None},
    }
    request = ChatCompletionRequest.model_validate(sent)
    provider.check_chat_request(request)  # every parameter is the upstream's to judge

    await provider.chat(request)

    assert fake_openai.last.path == "/v1/chat/completions"
    assert fake_openai.last.body == {**sent, "model": UPSTREAM_MODEL}


async def test_deployment_id_is_the_upstream_model_when_none_is_configured(
    fake_openai: FakeOpenAI, http: aiohttp.ClientSession, fake_openai_url: str
) -> None:
    provider = make_provider(http, f"{fake_openai_url}/", model=None, id="llama-3.1-8b")
    await provider.chat(chat_request())
    assert fake_openai.last.path == "/v1/chat/completions"
    assert fake_openai.last.body["model"] == "llama-3.1-8b"


async def test_headers_carry_key_organization_and_configured_headers(
    fake_openai: FakeOpenAI, http: aiohttp.ClientSession, fake_openai_url: str
) -> None:
    provider = make_provider(
        http,
        fake_openai_url,
        organization="org-keel",
        headers={"x-title": "Keel", "http-referer": "https://keel.example"},
    )
    await provider.chat(chat_request())
    headers = fake_openai.last.headers
    assert headers["authorization"] == f"Bearer {API_KEY}"
    assert headers["openai-organization"] == "org-keel"
    assert headers["x-title"] == "Keel"
    assert headers["http-referer"] == "https://keel.example"
    assert headers["content-type"] == "application/json"
    assert "api-key" not in headers


async def test_no_key_means_no_authorization_header(
    fake_openai: FakeOpenAI, http: aiohttp.ClientSession, fake_openai_url: str
) -> None:
    # A local vLLM or Ollama server usually runs without a key.
    provider = make_provider(http, fake_openai_url, api_key=None)
    await provider.chat(chat_request())
    assert "authorization" not in fake_openai.last.headers
    assert "openai-organization" not in fake_openai.last.headers


async def test_stream_options_on_a_non_streaming_call_are_forwarded_as_sent(
    fake_openai: FakeOpenAI, provider: OpenAICompatibleProvider
) -> None:
    # The upstream judges them (OpenAI refuses them without stream: true), as it would if the
    # client called it directly.
    await provider.chat(chat_request(stream_options={"include_usage": True}))
    assert fake_openai.last.body["stream_options"] == {"include_usage": True}


# --- non-streaming responses --------------------------------------------------------------------


async def test_chat_response_is_returned_unchanged(
    fake_openai: FakeOpenAI, provider: OpenAICompatibleProvider
) -> None:
    usage = {
        "prompt_tokens": 1200,
        "completion_tokens": 90,
        "total_tokens": 1290,
        "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 64, "accepted_prediction_tokens": 0},
    }
    call = {
        "id": "call_9",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    fake_openai.then(
        Reply(
            content=None,
            tool_calls=[call],
            finish_reason="tool_calls",
            usage=usage,
            message_extra={"reasoning_content": "Need the weather.", "refusal": None},
        )
    )

    response = await provider.chat(chat_request(tools=[WEATHER_TOOL]))

    assert response["id"] == "chatcmpl-fake"
    assert response["object"] == "chat.completion"
    assert response["model"] == UPSTREAM_MODEL
    assert response["system_fingerprint"] == "fp_fake"
    assert response["usage"] == usage
    assert response["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [call],
                "reasoning_content": "Need the weather.",
                "refusal": None,
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ]


# --- streaming ----------------------------------------------------------------------------------


async def test_stream_yields_chunks_in_order_and_forces_usage(
    fake_openai: FakeOpenAI, provider: OpenAICompatibleProvider
) -> None:
    usage = {
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "total_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 2},
        "completion_tokens_details": {"reasoning_tokens": 1},
    }
    fake_openai.then(Reply(content="one two three four", usage=usage))

    # The client did not ask for usage, nor even set `stream`: Keel needs the usage regardless.
    chunks = await collect(provider.chat_stream(chat_request(top_k=5)))

    body = fake_openai.last.body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["top_k"] == 5
    assert body["model"] == UPSTREAM_MODEL
    assert fake_openai.last.headers["accept"] == "text/event-stream"
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks if chunk["choices"]]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"content": "one "},
        {"content": "two "},
        {"content": "three "},
        {"content": "four "},
        {},
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == usage


async def test_stream_keeps_the_clients_other_stream_options(
    fake_openai: FakeOpenAI, provider: OpenAICompatibleProvider
) -> None:
    request = chat_request(
        stream=True, stream_options={"include_usage": False, "continuous_usage_stats": True}
    )
    chunks = await collect(provider.chat_stream(request))
    assert fake_openai.last.body["stream_options"] == {
        "include_usage": True,
        "continuous_usage_stats": True,
    }
    assert chunks[-1]["usage"]["total_tokens"] > 0


async def test_stream_usage_can_be_turned_off_for_servers_that_reject_it(
    fake_openai: FakeOpenAI, http: aiohttp.ClientSession, fake_openai_url: str
) -> None:
    provider = make_provider(http, fake_openai_url, options={"stream_usage": False})
    chunks = await collect(provider.chat_stream(chat_request(stream=True)))
    assert "stream_options" not in fake_openai.last.body
    assert content_of(chunks) == "Echo: Hi there "
    assert all(chunk["choices"] for chunk in chunks)


async def test_stream_passes_extra_delta_fields_through(
    fake_openai: FakeOpenAI, provider: OpenAICompatibleProvider
) -> None:
    fake_openai.then(Reply(content="42", message_extra={"reasoning_content": "6 times 7"}))
    chunks = await collect(provider.chat_stream(chat_request()))
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks if chunk["choices"]]
    assert {"reasoning_content": "6 times 7"} in deltas


async def test_cut_stream_raises_after_the_chunks_that_arrived(
    fake_openai: FakeOpenAI, provider: OpenAICompatibleProvider
) -> None:
    fake_openai.then(CutStream(after_chunks=2))
    received: list[dict[str, Any]] = []
    with pytest.raises((UpstreamConnectionError, UpstreamBadResponseError)):
        async for chunk in provider.chat_stream(chat_request()):
            received.append(chunk)
    assert len(received) == 2
    assert received[0]["choices"][0]["delta"]["role"] == "assistant"


async def test_stream_that_ends_cleanly_but_early_raises(
    fake_openai: FakeOpenAI, provider: OpenAICompatibleProvider
) -> None:
    chunk = {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": "A"}}],
    }
    fake_openai.then(RawStream(f"data: {json.dumps(chunk)}\n\n".encode()))
    with pytest.raises(UpstreamBadResponseError, match="before it finished"):
        await collect(provider.chat_stream(chat_request()))


async def test_stream_with_a_finish_reason_but_no_done_marker_is_complete(
    fake_openai: FakeOpenAI, provider: OpenAICompatibleProvider
) -> None:
    chunks = [
        {"choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    body = "".join(f"data: {json.dumps(chunk)}\r\n\r\n" for chunk in chunks)
    fake_openai.then(RawStream(f": keep-alive\n\n{body}".encode()))
    assert await collect(provider.chat_stream(chat_request())) == chunks


async def test_mid_stream_error_event_raises(
    fake_openai: FakeOpenAI, provider: OpenAICompatibleProvider
) -> None:
    fake_openai.then(StreamError(after_chunks=3, message="The engine is currently overloaded"))
    received: list[dict[str, Any]] = []
    with pytest.raises(UpstreamError, match="mid-stream: The engine is currently overloaded"):
        async for chunk in provider.chat_stream(chat_request()):
            received.append(chunk)
    assert len(received) == 3
    assert all("error" not in chunk for chunk in received)


@pytest.mark.parametrize("event", [b"data: {not json\n\n", b"data: [1, 2]\n\n", b'data: "x"\n\n'])
async def test_stream_event_that_is_not_a_json_object_is_a_bad_response(
    fake_openai: FakeOpenAI, provider: OpenAICompatibleProvider, event: bytes
) -> None:
    fake_openai.then(RawStream(event + b"data: [DONE]\n\n"))
    with pytest.raises(UpstreamBadResponseError):
        await collect(provider.chat_stream(chat_request()))


async def test_stream_releases_its_connection_when_it_fails(
    fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    # One connection in the pool: if the failed stream kept it, the next call could not start.
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as http:
        provider = make_provider(http, fake_openai_url, timeout_s=0.5)
        fake_openai.then(StreamError(after_chunks=1, hold_open_s=1.0))
        with pytest.raises(UpstreamError) as raised:
            await collect(provider.chat_stream(chat_request()))
        # `raised` keeps the traceback, and with it the frames of the failed stream, alive.
        response = await provider.chat(chat_request())
        assert "mid-stream" in raised.value.message
        assert response["choices"][0]["message"]["content"] == "Echo: Hi there"


# --- legacy completions and embeddings ----------------------------------------------------------


async def test_completion_is_forwarded(
    fake_openai: FakeOpenAI, provider: OpenAICompatibleProvider
) -> None:
    request = CompletionRequest.model_validate(
        {"model": "smart", "prompt": "Once upon", "max_tokens": 5, "echo": False, "top_k": 3}
    )
    response = await provider.complete(request)
    assert fake_openai.last.path == "/v1/completions"
    assert fake_openai.last.body == {
        "model": UPSTREAM_MODEL,
        "prompt": "Once upon",
        "max_tokens": 5,
        "echo": False,
        "top_k": 3,
    }
    assert response["object"] == "text_completion"
    assert response["choices"][0]["text"] == " completed: Once upon"
    assert response["usage"]["total_tokens"] == 5


async def test_completion_stream_is_forwarded_with_usage(
    fake_openai: FakeOpenAI, provider: OpenAICompatibleProvider
) -> None:
    request = CompletionRequest.model_validate({"model": "smart", "prompt": "a b", "stream": True})
    chunks = await collect(provider.complete_stream(request))
    assert fake_openai.last.path == "/v1/completions"
    assert fake_openai.last.body["stream"] is True
    assert fake_openai.last.body["stream_options"] == {"include_usage": True}
    assert fake_openai.last.body["model"] == UPSTREAM_MODEL
    texts = [chunk["choices"][0]["text"] for chunk in chunks if chunk["choices"]]
    assert texts == ["completed: ", "a ", "b "]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["prompt_tokens"] == 2


async def test_embeddings_are_forwarded(
    fake_openai: FakeOpenAI, provider: OpenAICompatibleProvider
) -> None:
    request = EmbeddingRequest.model_validate(
        {"model": "smart", "input": ["first text", "second"], "dimensions": 3, "user": "u1"}
    )
    response = await provider.embed(request)
    assert fake_openai.last.path == "/v1/embeddings"
    assert fake_openai.last.body == {
        "model": UPSTREAM_MODEL,
        "input": ["first text", "second"],
        "dimensions": 3,
        "user": "u1",
    }
    assert fake_openai.last.headers["authorization"] == f"Bearer {API_KEY}"
    assert [item["index"] for item in response["data"]] == [0, 1]
    assert response["data"][1]["embedding"] == [0.2, 0.2, 0.3]
    assert response["usage"] == {"prompt_tokens": 3, "total_tokens": 3}


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "error_class", "status"),
    [
        (ErrorReply(400, "'messages' must contain at least one message"), InvalidRequestError, 400),
        (
            ErrorReply(
                400,
                "This model's maximum context length is 128000 tokens. However, your messages "
                "resulted in 130512 tokens.",
                code="context_length_exceeded",
            ),
            ContextWindowExceededError,
            400,
        ),
        (
            ErrorReply(404, "The model `gpt-5-ultra` does not exist", code="model_not_found"),
            NotFoundError,
            404,
        ),
        (ErrorReply(500, "The server had an error", type="server_error"), UpstreamError, 502),
        (
            ErrorReply(503, "The engine is currently overloaded", type="server_error"),
            UpstreamUnavailableError,
            503,
        ),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_error_statuses_map_to_keel_errors(
    fake_openai: FakeOpenAI,
    provider: OpenAICompatibleProvider,
    reply: ErrorReply,
    error_class: type[UpstreamError],
    status: int,
    stream: bool,
) -> None:
    fake_openai.then(reply)
    with pytest.raises(error_class) as raised:
        if stream:
            await collect(provider.chat_stream(chat_request()))
        else:
            await provider.chat(chat_request())
    assert type(raised.value) is error_class
    assert raised.value.status_code == status
    if reply.status < 429:
        # The caller's own mistake reaches it as the upstream said it, field by field.
        assert raised.value.message == reply.message
        assert raised.value.error_type == reply.type
        if reply.code is not None:
            assert raised.value.code == reply.code
    else:
        # The upstream's failure: its message, read out of its error body, with who said it.
        assert raised.value.message == f"openai returned HTTP {reply.status}: {reply.message}"


async def test_context_window_error_has_its_code(
    fake_openai: FakeOpenAI, provider: OpenAICompatibleProvider
) -> None:
    fake_openai.then(ErrorReply(400, "maximum context length is 4096 tokens"))
    with pytest.raises(ContextWindowExceededError) as raised:
        await provider.chat(chat_request())
    assert raised.value.code == "context_length_exceeded"
    assert raised.value.to_body()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("stream", [False, True])
async def test_rejected_key_is_an_auth_error_that_never_echoes_the_key(
    fake_openai: FakeOpenAI, provider: OpenAICompatibleProvider, stream: bool
) -> None:
    # OpenAI masks the key it refuses; some compatible servers repeat it whole.
    fake_openai.then(ErrorReply(401, f"Incorrect API key provided: {API_KEY}.", code="bad_key"))
    with pytest.raises(UpstreamAuthError) as raised:
        if stream:
            await collect(provider.chat_stream(chat_request()))
        else:
            await provider.chat(chat_request())
    assert fake_openai.last.headers["authorization"] == f"Bearer {API_KEY}"
    assert raised.value.status_code == 502
    assert "Incorrect API key provided" in raised.value.message
    assert API_KEY not in str(raised.value)
    assert API_KEY not in json.dumps(raised.value.to_body())


async def test_rate_limit_keeps_retry_after(
    fake_openai: FakeOpenAI, provider: OpenAICompatibleProvider
) -> None:
    fake_openai.then(
        ErrorReply(429, "Rate limit reached for requests", type="requests", retry_after="7")
    )
    with pytest.raises(RateLimitError) as raised:
        await provider.chat(chat_request())
    assert raised.value.headers["retry-after"] == "7"
    # The upstream's request id and rate-limit state travel with it, for the client.
    assert raised.value.headers["x-request-id"] == "req_fake_upstream"
    assert "Rate limit reached for requests" in raised.value.message


async def test_rate_limit_in_a_stream_keeps_retry_after(
    fake_openai: FakeOpenAI, provider: OpenAICompatibleProvider
) -> None:
    fake_openai.then(ErrorReply(429, "Slow down", retry_after="2"))
    with pytest.raises(RateLimitError) as raised:
        await collect(provider.chat_stream(chat_request()))
    assert raised.value.headers["retry-after"] == "2"


async def test_errors_of_embeddings_and_completions_are_mapped(
    fake_openai: FakeOpenAI, provider: OpenAICompatibleProvider
) -> None:
    fake_openai.then(ErrorReply(400, "dimensions too large"), ErrorReply(503, "busy"))
    with pytest.raises(InvalidRequestError, match="dimensions too large"):
        await provider.embed(EmbeddingRequest(model="smart", input="x", dimensions=99999))
    with pytest.raises(UpstreamUnavailableError, match="busy"):
        await provider.complete(CompletionRequest(model="smart", prompt="x"))


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_slower_than_the_timeout_is_a_timeout_error(
    fake_openai: FakeOpenAI, http: aiohttp.ClientSession, fake_openai_url: str, stream: bool
) -> None:
    provider = make_provider(http, fake_openai_url, timeout_s=0.3)
    fake_openai.then(Hang(1.0))
    with pytest.raises(UpstreamTimeoutError, match=r"0\.3s") as raised:
        if stream:
            await collect(provider.chat_stream(chat_request()))
        else:
            await provider.chat(chat_request())
    assert raised.value.status_code == 504


async def test_malformed_body_is_a_bad_response(
    fake_openai: FakeOpenAI, provider: OpenAICompatibleProvider
) -> None:
    fake_openai.then(Malformed(), Malformed(b"[1, 2, 3]"))
    with pytest.raises(UpstreamBadResponseError, match="not JSON"):
        await provider.chat(chat_request())
    with pytest.raises(UpstreamBadResponseError, match="not an object"):
        await provider.chat(chat_request())


@pytest.mark.parametrize("stream", [False, True])
async def test_closed_port_is_a_connection_error(http: aiohttp.ClientSession, stream: bool) -> None:
    provider = make_provider(http, f"http://127.0.0.1:{closed_port()}/v1", connect_timeout_s=2)
    with pytest.raises(UpstreamConnectionError, match="cannot connect to openai") as raised:
        if stream:
            await collect(provider.chat_stream(chat_request()))
        else:
            await provider.chat(chat_request())
    assert raised.value.status_code == 502


# --- Azure OpenAI -------------------------------------------------------------------------------


async def test_azure_with_api_version_uses_the_deployment_url_and_api_key_header(
    fake_openai: FakeOpenAI, http: aiohttp.ClientSession, server: str
) -> None:
    provider = make_azure(http, server, organization="org-ignored")
    response = await provider.chat(chat_request(top_k=2))

    sent = fake_openai.last
    assert sent.path == f"/openai/deployments/{AZURE_DEPLOYMENT}/chat/completions"
    assert sent.query == {"api-version": AZURE_VERSION}
    assert sent.headers["api-key"] == API_KEY
    assert "authorization" not in sent.headers
    assert "openai-organization" not in sent.headers
    assert sent.body["top_k"] == 2
    assert response["choices"][0]["message"]["content"] == "Echo: Hi there"


async def test_azure_stream_embeddings_and_completions_use_the_deployment_url(
    fake_openai: FakeOpenAI, http: aiohttp.ClientSession, server: str
) -> None:
    provider = make_azure(http, server, headers={"x-ms-client-request-id": "r-1"})
    deployment = f"/openai/deployments/{AZURE_DEPLOYMENT}"

    chunks = await collect(provider.chat_stream(chat_request()))
    assert fake_openai.last.path == f"{deployment}/chat/completions"
    assert fake_openai.last.body["stream_options"] == {"include_usage": True}
    assert chunks[-1]["usage"]["completion_tokens"] == 3

    await provider.embed(EmbeddingRequest(model="smart", input="hello"))
    assert fake_openai.last.path == f"{deployment}/embeddings"

    await provider.complete(CompletionRequest(model="smart", prompt="hello"))
    assert fake_openai.last.path == f"{deployment}/completions"

    for sent in fake_openai.requests:
        assert sent.query == {"api-version": AZURE_VERSION}
        assert sent.headers["api-key"] == API_KEY
        assert sent.headers["x-ms-client-request-id"] == "r-1"
        assert "authorization" not in sent.headers


async def test_azure_without_api_version_uses_the_v1_api(
    fake_openai: FakeOpenAI, http: aiohttp.ClientSession, server: str
) -> None:
    provider = make_azure(http, server, api_version=None)

    await provider.chat(chat_request())
    sent = fake_openai.last
    assert sent.path == "/openai/v1/chat/completions"
    assert sent.query == {}
    assert sent.body["model"] == AZURE_DEPLOYMENT
    assert sent.headers["api-key"] == API_KEY
    assert "authorization" not in sent.headers

    await provider.embed(EmbeddingRequest(model="smart", input="hello"))
    assert fake_openai.last.path == "/openai/v1/embeddings"
    assert fake_openai.last.body["model"] == AZURE_DEPLOYMENT


async def test_azure_errors_are_mapped_and_never_echo_the_key(
    fake_openai: FakeOpenAI, http: aiohttp.ClientSession, server: str
) -> None:
    provider = make_azure(http, server)
    fake_openai.then(
        ErrorReply(401, f"Access denied due to invalid subscription key {API_KEY}"),
        ErrorReply(404, "The API deployment for this resource does not exist."),
    )
    with pytest.raises(UpstreamAuthError) as raised:
        await provider.chat(chat_request())
    assert API_KEY not in str(raised.value)
    assert "azure" in raised.value.message
    with pytest.raises(NotFoundError, match="deployment for this resource does not exist"):
        await provider.chat(chat_request())
