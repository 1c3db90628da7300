"""The clients people point at Keel, against a real Keel server on loopback: LiteLLM (as a client of
Keel's OpenAI API), LangChain's ChatOpenAI, and the openai SDK, over a fake OpenAI upstream and
over the bundled local model."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from keel.config import Settings
from keel.server import create_app
from tests.conftest import remote_settings
from tests.fakes.openai import FakeOpenAI, Reply
from tests.fakes.server import serve_on_loopback

# LiteLLM's own pydantic models warn about their TypedDicts; nothing Keel can act on.
pytestmark = pytest.mark.filterwarnings("ignore:Item .* is using the `ReadOnly` qualifier")

UPSTREAM = "gpt-4o-mini"
LOCAL = "smollm2-135m-instruct"


def keel_on_loopback(settings: Settings) -> AbstractContextManager[str]:
    """Keel's app, lifespan included, served by uvicorn on a loopback port; yields its base URL."""
    return serve_on_loopback(create_app(settings), lifespan="on")


@pytest.fixture(scope="module")
def keel_url(
    tmp_path_factory: pytest.TempPathFactory, served_openai: tuple[FakeOpenAI, str]
) -> Iterator[str]:
    """Keel serving one `openai_compatible` deployment on the fake OpenAI upstream."""
    _, upstream_url = served_openai
    model = {
        "id": UPSTREAM,
        "provider": "openai_compatible",
        "api_base": f"{upstream_url}/v1",
        "api_key": "sk-upstream",
    }
    settings = remote_settings(tmp_path_factory.mktemp("keel-clients"), [model])
    with keel_on_loopback(settings) as url:
        yield url


@pytest.fixture(scope="module")
def local_keel_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Keel serving the bundled chat model only."""
    home: Path = tmp_path_factory.mktemp("keel-local-clients")
    settings = Settings.model_validate(
        {"home": str(home), "local_models": {"chat": True, "embeddings": False}}
    )
    with keel_on_loopback(settings) as url:
        yield url


@pytest.fixture(scope="module")
def litellm() -> ModuleType:
    with pytest.MonkeyPatch.context() as env:
        # Read at import: the bundled price map instead of a download.
        env.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm

    litellm.telemetry = False
    return litellm


@tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"sunny in {city}"


def chat_openai(base_url: str, model: str = UPSTREAM, **params: Any) -> ChatOpenAI:
    return ChatOpenAI(model=model, base_url=f"{base_url}/v1", api_key="sk-client", **params)


def test_litellm_completion(litellm: ModuleType, keel_url: str, fake_openai: FakeOpenAI) -> None:
    response = litellm.completion(
        model=f"openai/{UPSTREAM}",
        api_base=f"{keel_url}/v1",
        api_key="sk-client",
        messages=[{"role": "user", "content": "hello there"}],
    )
    assert response.choices[0].message.content == "Echo: hello there"
    assert response.usage.completion_tokens == 3  # the fake counts words
    assert fake_openai.last.body["model"] == UPSTREAM
    assert fake_openai.last.headers["authorization"] == "Bearer sk-upstream"


def test_litellm_streaming(litellm: ModuleType, keel_url: str, fake_openai: FakeOpenAI) -> None:
    stream = litellm.completion(
        model=f"openai/{UPSTREAM}",
        api_base=f"{keel_url}/v1",
        api_key="sk-client",
        messages=[{"role": "user", "content": "hello there"}],
        stream=True,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "Echo: hello there "  # the fake streams word by word
    assert fake_openai.last.body["stream"] is True


def test_langchain_invoke_and_stream(keel_url: str, fake_openai: FakeOpenAI) -> None:
    llm = chat_openai(keel_url)
    assert llm.invoke("good morning").content == "Echo: good morning"
    streamed = "".join(str(chunk.content) for chunk in llm.stream("good evening"))
    assert streamed == "Echo: good evening "
    assert fake_openai.last.body["stream"] is True


def test_langchain_tool_call_round_trip(keel_url: str, fake_openai: FakeOpenAI) -> None:
    llm = chat_openai(keel_url).bind_tools([get_weather])
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    fake_openai.then(Reply(tool_calls=[call], finish_reason="tool_calls"))
    question = HumanMessage("Weather in Paris?")
    asked = llm.invoke([question])
    assert isinstance(asked, AIMessage)
    assert [(c["name"], c["args"], c["id"]) for c in asked.tool_calls] == [
        ("get_weather", {"city": "Paris"}, "call_1")
    ]
    assert fake_openai.last.body["tools"][0]["function"]["name"] == "get_weather"

    result = get_weather.invoke(asked.tool_calls[0])
    assert isinstance(result, ToolMessage)
    answer = llm.invoke([question, asked, result])
    assert answer.content == "Echo: Weather in Paris?"
    # The history reached the upstream as OpenAI's format has it.
    assistant, tool_result = fake_openai.last.body["messages"][1:]
    assert assistant["role"] == "assistant" and assistant["content"] is None
    assert assistant["tool_calls"][0]["id"] == "call_1"
    assert tool_result == {"role": "tool", "tool_call_id": "call_1", "content": "sunny in Paris"}


def test_openai_compatible_deployments_report_the_openai_name(
    keel_url: str, fake_openai: FakeOpenAI
) -> None:
    client = openai.OpenAI(base_url=f"{keel_url}/v1", api_key="sk-client")
    assert client.models.retrieve(UPSTREAM).owned_by == "openai"
    answer = client.chat.completions.with_raw_response.create(
        model=UPSTREAM, messages=[{"role": "user", "content": "hi"}]
    )
    request_id = answer.headers["x-keel-request-id"]
    deadline = time.monotonic() + 10
    while (record := httpx.get(f"{keel_url}/v1/keel/requests/{request_id}")).status_code == 404:
        assert time.monotonic() < deadline, "the request record was never written"
        time.sleep(0.1)
    assert record.json()["provider"] == "openai"
    deployments = httpx.get(f"{keel_url}/v1/keel/deployments").json()["data"]
    assert [d["provider"] for d in deployments] == ["openai"]


TOOL_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}


def test_langchain_tool_history_on_the_local_model(local_keel_url: str) -> None:
    # LangChain sends the assistant's tool-calling turn with `content: null`.
    llm = chat_openai(local_keel_url, LOCAL, max_tokens=4, temperature=0)
    history = [
        SystemMessage("Answer briefly."),
        HumanMessage("Weather in Paris?"),
        AIMessage(
            "", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "call_1"}]
        ),
        ToolMessage("sunny", tool_call_id="call_1"),
    ]
    answer = llm.bind_tools([get_weather], tool_choice="none").invoke(history)
    assert isinstance(answer.content, str)
    assert answer.response_metadata["finish_reason"] in {"stop", "length"}
    assert not answer.tool_calls


def test_openai_sdk_null_content_n_and_logprobs_on_the_local_model(local_keel_url: str) -> None:
    client = openai.OpenAI(base_url=f"{local_keel_url}/v1", api_key="unused-locally")
    messages: list[Any] = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    answer = client.chat.completions.create(
        model=LOCAL,
        messages=messages,
        n=1,
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    choice = answer.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    assert "".join(t.token for t in choice.logprobs.content) == choice.message.content
    assert all(len(t.top_logprobs) == 2 for t in choice.logprobs.content)

    stream = client.chat.completions.create(
        model=LOCAL, messages=messages, n=2, max_tokens=4, temperature=0, stream=True
    )
    texts = ["", ""]
    for chunk in stream:
        for streamed in chunk.choices:
            texts[streamed.index] += streamed.delta.content or ""
    assert texts[0] and texts[0] == texts[1]  # greedy: both choices say the same
