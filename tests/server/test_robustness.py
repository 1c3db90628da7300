"""Inputs and upstream answers that once cost a request record, a retry, or a secret."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from keel.errors import UpstreamAuthError
from keel.gateway import Call
from keel.providers._http import error_for_status
from keel.store import Database
from tests.conftest import flushed_records, remote_settings, running_app
from tests.fakes.openai import FakeOpenAI, Hang, RawStream


def chat(**extra: object) -> dict[str, object]:
    return {"model": "gpt", "messages": [{"role": "user", "content": "hi"}], **extra}


def one_model(home: Path, api_base: str, **extra: object):  # type: ignore[no-untyped-def]
    return remote_settings(
        home,
        [{"id": "gpt", "provider": "openai", "api_base": api_base, "timeout_s": 5}],
        **extra,
    )


async def test_a_client_supplied_oversized_model_name_cannot_stall_recording(
    postgres_url: str, keel_home: Path, fake_openai_url: str
) -> None:
    settings = one_model(keel_home, fake_openai_url, database_url=postgres_url)
    async with running_app(settings) as (_app, client):
        missing = await client.post("/v1/chat/completions", json=chat(model="x" * 300 + "\x00"))
        assert missing.status_code == 404
        ok = await client.post("/v1/chat/completions", json=chat())
        assert ok.status_code == 200
    database = Database(postgres_url)
    rows = database.recent_records(limit=10)
    database.dispose()
    assert sorted(r["status_code"] for r in rows) == [200, 404]
    assert max(len(r["model_requested"]) for r in rows) == 255


async def test_a_cancelled_call_is_still_recorded(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    fake_openai.then(Hang(5))
    async with running_app(one_model(keel_home, fake_openai_url)) as (app, _client):
        body = json.dumps(chat()).encode()

        async def source() -> bytes:
            return body

        task = asyncio.create_task(
            app.state.keel.gateway.chat_completions(source, Call(endpoint="chat.completions"))
        )
        while not fake_openai.requests:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        [record] = await flushed_records(app)
    assert record["status_code"] == 499


async def test_unreadable_usage_from_upstream_still_leaves_a_record(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": "n/a", "completion_tokens_details": "?"},
    }
    fake_openai.then(RawStream(f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()))
    async with running_app(one_model(keel_home, fake_openai_url)) as (app, client):
        response = await client.post("/v1/chat/completions", json=chat(stream=True))
        assert response.text.endswith("data: [DONE]\n\n")
        assert '"usage"' not in response.text  # the client did not ask for usage
        [record] = await flushed_records(app)
    assert record["status_code"] == 200


async def test_undecodable_stream_bytes_are_a_bad_response_that_fails_over(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    fake_openai.then(RawStream(b"data: \xff\xfe\n\n"))
    async with running_app(one_model(keel_home, fake_openai_url)) as (app, client):
        response = await client.post("/v1/chat/completions", json=chat(stream=True))
        assert response.status_code == 200
        assert response.headers["x-keel-attempts"] == "2"
        [record] = await flushed_records(app)
    assert record["attempts"] == 2


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"model": "gpt", "prompt": "hi", "cache": {"ttl": 60}}),
        ("/v1/embeddings", {"model": "gpt", "input": "hi", "cache": {"ttl": 60}}),
    ],
)
async def test_the_cache_field_never_reaches_a_provider(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str, path: str, body: dict
) -> None:
    async with running_app(one_model(keel_home, fake_openai_url)) as (_app, client):
        assert (await client.post(path, json=body)).status_code == 200
    assert "cache" not in fake_openai.last.body


async def test_an_empty_prompt_list_is_a_400(keel_home: Path, fake_openai_url: str) -> None:
    async with running_app(one_model(keel_home, fake_openai_url)) as (_app, client):
        response = await client.post("/v1/completions", json={"model": "gpt", "prompt": []})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "prompt"


def test_a_key_repeated_at_the_end_of_a_long_error_body_is_redacted() -> None:
    key = "sk-proj-ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    body = json.dumps({"error": {"message": "x" * 280 + f" bad key {key}"}}).encode()
    error = error_for_status("openai", 401, body, credentials=[key])
    assert isinstance(error, UpstreamAuthError)
    assert "sk-pr" not in error.message and "[redacted]" in error.message


async def test_a_client_disconnecting_mid_upload_is_recorded_as_499(
    keel_home: Path, fake_openai_url: str
) -> None:
    async with running_app(one_model(keel_home, fake_openai_url)) as (app, _client):
        messages: list[dict[str, object]] = [
            {"type": "http.request", "body": b'{"model": "gp', "more_body": True},
            {"type": "http.disconnect"},
        ]
        sent: list[dict[str, object]] = []

        async def receive() -> dict[str, object]:
            return messages.pop(0)

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/chat/completions",
            "raw_path": b"/v1/chat/completions",
            "query_string": b"",
            "headers": [(b"content-type", b"application/json")],
            "http_version": "1.1",
            "scheme": "http",
            "server": ("keel", 80),
            "client": ("127.0.0.1", 1),
            "root_path": "",
        }
        await app(scope, receive, send)
        [record] = await flushed_records(app)
    assert record["status_code"] == 499
