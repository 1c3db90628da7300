"""The OpenAI-compatible API end to end in-process: request path, headers, SSE, records."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from keel import __version__
from tests.conftest import flushed_records, remote_settings, running_app
from tests.fakes.openai import CutStream, ErrorReply, FakeOpenAI, Hang, Reply


@pytest.fixture
async def keel(
    keel_home: Path, fake_openai_url: str
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    settings = remote_settings(
        keel_home,
        [
            {
                "id": "gpt",
                "provider": "openai",
                "model": "gpt-4o-mini",
                "api_base": fake_openai_url,
                "api_key": "sk-test-secret-123",
                "timeout_s": 0.5,
            },
            {
                "id": "claude",
                "provider": "anthropic",
                "model": "claude-sonnet-4-5",
                "api_base": "http://127.0.0.1:9",
                "api_key": "sk-ant-secret-456",
            },
        ],
        server={"max_request_body_bytes": 4096},
        # One attempt: these tests are about translation and errors; retries are tested apart.
        routing={"retry": {"max_attempts": 1}},
    )
    async with running_app(settings) as running:
        yield running


def chat_body(**overrides: Any) -> dict[str, Any]:
    return {
        "model": "gpt",
        "messages": [
            {"role": "user", "content": "hello there"},
        ],
    } | overrides


def sse_events(raw: str) -> list[str]:
    return [line[len("data: ") :] for line in raw.split("\n\n") if line.startswith("data: ")]


async def test_chat_completion_is_forwarded_and_accounted(
    keel: tuple[FastAPI, httpx.AsyncClient], fake_openai: FakeOpenAI
) -> None:
    app, client = keel
    response = await client.post("/v1/chat/completions", json=chat_body(temperature=0))
    assert response.status_code == 200
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "Echo: hello there"
    assert fake_openai.last.body["model"] == "gpt-4o-mini"
    assert fake_openai.last.body["temperature"] == 0
    # gpt-4o-mini: 2 prompt tokens at $0.15/1M + 3 completion tokens at $0.60/1M
    assert response.headers["x-keel-cost-usd"] == f"{(2 * 0.15 + 3 * 0.60) / 1e6:.8f}"
    assert float(response.headers["x-keel-overhead-ms"]) >= 0
    request_id = response.headers["x-keel-request-id"]

    [record] = await flushed_records(app)
    assert record["id"] == request_id
    assert record["model_requested"] == "gpt"
    assert record["provider"] == "openai"
    assert record["deployment"] == "gpt"
    assert record["upstream_model"] == "gpt-4o-mini"
    assert record["status_code"] == 200
    assert (record["prompt_tokens"], record["completion_tokens"]) == (2, 3)
    assert record["cost_usd"] == pytest.approx((2 * 0.15 + 3 * 0.60) / 1e6)
    assert record["latency_ms"] > 0 and record["error_type"] is None


async def test_stream_is_openai_sse_and_usage_only_when_asked(
    keel: tuple[FastAPI, httpx.AsyncClient], fake_openai: FakeOpenAI
) -> None:
    app, client = keel
    plain = await client.post("/v1/chat/completions", json=chat_body(stream=True))
    assert plain.headers["content-type"].startswith("text/event-stream")
    events = sse_events(plain.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert all("usage" not in chunk for chunk in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text.strip() == "Echo: hello there"
    # Keel asks the upstream for usage either way, to account for the call.
    assert fake_openai.last.body["stream_options"] == {"include_usage": True}

    with_usage = await client.post(
        "/v1/chat/completions",
        json=chat_body(stream=True, stream_options={"include_usage": True}),
    )
    chunks = [json.loads(event) for event in sse_events(with_usage.text)[:-1]]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 3

    records = await flushed_records(app)
    assert len(records) == 2
    assert all(r["stream"] and r["completion_tokens"] == 3 for r in records)
    assert all(r["ttft_ms"] is not None and r["cost_usd"] > 0 for r in records)


async def test_stream_cut_after_first_tokens_ends_with_an_error_event(
    keel: tuple[FastAPI, httpx.AsyncClient], fake_openai: FakeOpenAI
) -> None:
    app, client = keel
    fake_openai.then(CutStream(after_chunks=2))
    response = await client.post("/v1/chat/completions", json=chat_body(stream=True))
    assert response.status_code == 200
    events = sse_events(response.text)
    assert "[DONE]" not in events
    error = json.loads(events[-1])["error"]
    assert error["type"] == "upstream_error"
    [record] = await flushed_records(app)
    assert record["status_code"] == 502 and record["error_type"] == "upstream_error"


async def test_stream_failing_before_first_chunk_gets_a_real_status(
    keel: tuple[FastAPI, httpx.AsyncClient], fake_openai: FakeOpenAI
) -> None:
    app, client = keel
    fake_openai.then(ErrorReply(503, "overloaded", type="server_error"))
    response = await client.post("/v1/chat/completions", json=chat_body(stream=True))
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "upstream_unavailable"
    [record] = await flushed_records(app)
    assert record["status_code"] == 503


async def test_tool_calls_pass_through(
    keel: tuple[FastAPI, httpx.AsyncClient], fake_openai: FakeOpenAI
) -> None:
    _, client = keel
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    fake_openai.then(Reply(content=None, tool_calls=[call], finish_reason="tool_calls"))
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    response = await client.post("/v1/chat/completions", json=chat_body(tools=tools))
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"] == [call]
    assert fake_openai.last.body["tools"] == tools


async def test_legacy_completions_and_embeddings(
    keel: tuple[FastAPI, httpx.AsyncClient], fake_openai: FakeOpenAI
) -> None:
    app, client = keel
    completion = await client.post("/v1/completions", json={"model": "gpt", "prompt": "say"})
    assert completion.status_code == 200
    assert completion.json()["object"] == "text_completion"
    embedding = await client.post(
        "/v1/embeddings", json={"model": "gpt", "input": ["a", "b"], "encoding_format": "base64"}
    )
    assert embedding.status_code == 200
    assert fake_openai.last.body["encoding_format"] == "base64"
    records = await flushed_records(app)
    assert sorted(r["endpoint"] for r in records) == ["completions", "embeddings"]


async def test_models_are_listed_and_described(keel: tuple[FastAPI, httpx.AsyncClient]) -> None:
    _, client = keel
    listed = (await client.get("/v1/models")).json()
    assert listed["object"] == "list"
    assert [m["id"] for m in listed["data"]] == ["gpt", "claude"]
    assert (await client.get("/v1/models/claude")).json()["owned_by"] == "anthropic"
    missing = await client.get("/v1/models/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("send", "status", "param", "code"),
    [
        ({"content": b"{not json"}, 400, None, "invalid_json"),
        ({"json": {"model": "gpt"}}, 400, "messages", None),
        ({"json": chat_body(temperature="hot")}, 400, "temperature", None),
        ({"json": chat_body(messages=[{"role": "wizard", "content": "x"}])}, 400, None, None),
        ({"json": chat_body(model="no-such-model")}, 404, "model", "model_not_found"),
        ({"json": chat_body(model="claude", logit_bias={"1": 2})}, 400, "logit_bias", None),
        ({"json": chat_body(messages=[{"role": "user", "content": "x" * 5000}])}, 413, None, None),
        ({"content": b""}, 400, None, None),
        ({"json": [1, 2]}, 400, None, None),
    ],
)
async def test_bad_input_gets_an_openai_error_body(
    keel: tuple[FastAPI, httpx.AsyncClient],
    send: dict[str, Any],
    status: int,
    param: str | None,
    code: str | None,
) -> None:
    app, client = keel
    response = await client.post(
        "/v1/chat/completions", headers={"content-type": "application/json"}, **send
    )
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    assert "Traceback" not in response.text
    [record] = await flushed_records(app)
    assert record["status_code"] == status


async def test_upstream_failures_map_to_gateway_statuses(
    keel: tuple[FastAPI, httpx.AsyncClient], fake_openai: FakeOpenAI
) -> None:
    app, client = keel
    fake_openai.then(Hang(2.0))
    timed_out = await client.post("/v1/chat/completions", json=chat_body())
    assert timed_out.status_code == 504
    assert timed_out.json()["error"]["code"] == "upstream_timeout"

    down = await client.post("/v1/chat/completions", json=chat_body(model="claude"))
    assert down.status_code == 502
    assert down.json()["error"]["code"] == "upstream_unreachable"

    fake_openai.then(ErrorReply(429, "slow down", type="rate_limit_error", retry_after="7"))
    limited = await client.post("/v1/chat/completions", json=chat_body())
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "7"

    records = await flushed_records(app)
    assert sorted(r["status_code"] for r in records) == [429, 502, 504]


async def test_secrets_never_reach_clients_records_or_logs(
    keel: tuple[FastAPI, httpx.AsyncClient],
    fake_openai: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, client = keel
    fake_openai.then(ErrorReply(401, "Incorrect API key provided: sk-test-******-123"))
    response = await client.post("/v1/chat/completions", json=chat_body())
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_authentication_failed"
    assert fake_openai.last.headers["authorization"] == "Bearer sk-test-secret-123"
    records = await flushed_records(app)
    everything = response.text + json.dumps(records, default=str) + caplog.text
    assert "sk-test-secret-123" not in everything
    assert "sk-ant-secret-456" not in everything


async def test_unknown_routes_and_methods_use_the_error_body(
    keel: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    _, client = keel
    missing = await client.get("/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "invalid_request_error"
    wrong_method = await client.get("/v1/chat/completions")
    assert wrong_method.status_code == 405
    assert "error" in wrong_method.json()


async def test_health_readiness_and_records_api(keel: tuple[FastAPI, httpx.AsyncClient]) -> None:
    app, client = keel
    assert (await client.get("/healthz")).json() == {"status": "ok", "version": __version__}
    await app.state.keel.warmup  # the PII analyzer loads in the background
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["database"] == "ok"
    assert ready.json()["checks"]["pii_analyzer"] == "ok"
    response = await client.post("/v1/chat/completions", json=chat_body())
    await flushed_records(app)
    request_id = response.headers["x-keel-request-id"]
    record = (await client.get(f"/v1/keel/requests/{request_id}")).json()
    assert record["id"] == request_id
    listed = (await client.get("/v1/keel/requests", params={"model": "gpt"})).json()
    assert [r["id"] for r in listed["data"]] == [request_id]
    assert (await client.get("/v1/keel/requests/nope")).status_code == 404
    assert (await client.get("/v1/keel/requests", params={"limit": 0})).status_code == 400
    injected = await client.get("/v1/keel/requests", params={"model": "x' OR '1'='1"})
    assert injected.status_code == 200 and injected.json()["data"] == []
