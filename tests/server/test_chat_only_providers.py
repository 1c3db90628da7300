"""Legacy /v1/completions and parameter checks over a chat-only provider (Anthropic's fake)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import flushed_records, remote_settings, running_app
from tests.fakes.anthropic import FakeAnthropic, text_reply
from tests.fakes.server import serve_on_loopback


@pytest.fixture(scope="module")
def anthropic() -> Iterator[FakeAnthropic]:
    fake = FakeAnthropic(api_key="sk-ant-test")
    with serve_on_loopback(fake.app) as url:
        fake.url = url
        yield fake


@pytest.fixture
async def keel(
    keel_home: Path, anthropic: FakeAnthropic
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    anthropic.reset()
    settings = remote_settings(
        keel_home,
        [
            {
                "id": "claude",
                "provider": "anthropic",
                "model": "claude-sonnet-4-5",
                "api_base": anthropic.url,
                "api_key": "sk-ant-test",
            }
        ],
    )
    async with running_app(settings) as running:
        yield running


async def test_legacy_completion_is_served_through_chat(
    keel: tuple[FastAPI, httpx.AsyncClient], anthropic: FakeAnthropic
) -> None:
    app, client = keel
    anthropic.then(text_reply(" a princess lived."))
    response = await client.post(
        "/v1/completions", json={"model": "claude", "prompt": "Once upon a time", "max_tokens": 9}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == " a princess lived."
    assert (
        anthropic.last.body["messages"]
        == [{"role": "user", "content": [{"type": "text", "text": "Once upon a time"}]}]
        or anthropic.last.body["messages"][0]["role"] == "user"
    )
    assert anthropic.last.body["max_tokens"] == 9
    [record] = await flushed_records(app)
    assert record["endpoint"] == "completions" and record["provider"] == "anthropic"
    assert record["cost_usd"] and record["cost_usd"] > 0


async def test_legacy_completion_streams_as_text_completion_chunks(
    keel: tuple[FastAPI, httpx.AsyncClient], anthropic: FakeAnthropic
) -> None:
    _, client = keel
    anthropic.then(text_reply("hello world"))
    response = await client.post(
        "/v1/completions", json={"model": "claude", "prompt": "say", "stream": True}
    )
    events = [e[6:] for e in response.text.split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"text_completion"}
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "hello world"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "echo": True}, "echo"),
        ({"prompt": ["a", "b"]}, "prompt"),
    ],
)
async def test_legacy_options_a_chat_model_cannot_honour_are_refused(
    keel: tuple[FastAPI, httpx.AsyncClient], anthropic: FakeAnthropic, body: dict, param: str
) -> None:
    _, client = keel
    response = await client.post("/v1/completions", json={"model": "claude", **body})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert anthropic.requests == []
