"""The spans Keel keeps of gateway calls, read back through `GET /v1/keel/requests/{id}/trace`:
a success, retries and a fallback, a cache hit, a guardrail block, a stream, a caller's
`traceparent`, content capture with PII masking, retention, and PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from keel.config_loading import load_settings
from keel.errors import ConfigError
from keel.identity import Actor
from keel.monitoring.spans import SpanTree, wall_ns
from keel.monitoring.trace_context import continue_trace
from tests.conftest import remote_settings, running_app
from tests.fakes.openai import ErrorReply, FakeOpenAI

FAST_RETRY = {"max_attempts": 2, "backoff_initial_s": 0.01, "backoff_max_s": 0.02, "deadline_s": 10}
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


def deployment(model_id: str, url: str, upstream: str = "up-model") -> dict[str, Any]:
    return {
        "id": model_id,
        "provider": "openai",
        "model": upstream,
        "api_base": url,
        "api_key": "sk-test",
        "timeout_s": 5,
    }


def settings_for(home: Path, url: str, **extra: Any) -> Any:
    extra.setdefault("cache", {"enabled": False})
    return remote_settings(home, [deployment("gpt-test", url)], **extra)


def chat(content: str = "hello there", **overrides: Any) -> dict[str, Any]:
    return {"model": "gpt-test", "messages": [{"role": "user", "content": content}]} | overrides


async def trace_of(app: FastAPI, client: httpx.AsyncClient, request_id: str) -> dict[str, Any]:
    keel = app.state.keel
    await keel.recorder.flush()
    await keel.tracing.flush()
    response = await client.get(f"/v1/keel/requests/{request_id}/trace")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def by_name(found: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [span for span in found["spans"] if span["name"] == name]


def one(found: dict[str, Any], name: str) -> dict[str, Any]:
    spans = by_name(found, name)
    assert len(spans) == 1, [span["name"] for span in found["spans"]]
    return spans[0]


def children_of(found: dict[str, Any], span: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in found["spans"] if s["parent_span_id"] == span["span_id"]]


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def test_a_successful_call_has_a_server_root_and_a_client_attempt(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    async with running_app(settings_for(keel_home, fake_openai_url)) as (app, client):
        response = await client.post(
            "/v1/chat/completions", json=chat(temperature=0.25, max_tokens=40, top_p=0.5)
        )
        assert response.status_code == 200
        request_id = response.headers["x-keel-request-id"]
        trace_id = response.headers["x-keel-trace-id"]
        # A trace Keel starts takes its id from the request id's random part.
        assert trace_id == request_id.removeprefix("req_")
        traceparent = response.headers["traceparent"]
        assert re.fullmatch(rf"00-{trace_id}-[0-9a-f]{{16}}-01", traceparent)

        found = await trace_of(app, client, request_id)
    assert (found["object"], found["request_id"], found["trace_id"]) == (
        "trace",
        request_id,
        trace_id,
    )
    root = found["spans"][0]
    assert (root["name"], root["kind"], root["parent_span_id"]) == ("chat gpt-test", "server", None)
    assert root["span_id"] == traceparent.split("-")[2]
    attributes = root["attributes"]
    # "hello there" is two words; the fake answers "Echo: hello there", three words.
    expected = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-test",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.temperature": 0.25,
        "gen_ai.request.max_tokens": 40,
        "gen_ai.request.top_p": 0.5,
        "gen_ai.response.model": "up-model",
        "gen_ai.response.id": "chatcmpl-fake",
        "gen_ai.response.finish_reasons": ["stop"],
        "gen_ai.usage.input_tokens": 2,
        "gen_ai.usage.output_tokens": 3,
        "keel.request_id": request_id,
        "keel.deployment": "gpt-test",
        "keel.attempts": 1,
        "http.response.status_code": 200,
    }
    assert {name: attributes.get(name) for name in expected} == expected
    assert root["status"] == "unset"

    attempt = one(found, "chat up-model")
    assert attempt["kind"] == "client" and attempt["parent_span_id"] == root["span_id"]
    port = int(fake_openai_url.split(":")[2].split("/")[0])
    assert {
        name: attempt["attributes"].get(name)
        for name in (
            "gen_ai.provider.name",
            "gen_ai.request.model",
            "gen_ai.usage.output_tokens",
            "keel.outcome",
            "keel.attempt",
            "server.address",
            "server.port",
        )
    } == {
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "up-model",
        "gen_ai.usage.output_tokens": 3,
        "keel.outcome": "ok",
        "keel.attempt": 1,
        "server.address": "127.0.0.1",
        "server.port": port,
    }
    # The attempt lies within the call.
    assert moment(root["start_time"]) <= moment(attempt["start_time"])
    assert moment(attempt["end_time"]) <= moment(root["end_time"])
    assert 0 <= attempt["duration_ms"] <= root["duration_ms"]
    # Content is not captured unless asked for.
    assert not any("gen_ai.input.messages" in span["attributes"] for span in found["spans"])


async def test_retries_and_a_fallback_are_attempt_spans_in_order(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    fake_openai.faults["up-a"] = ErrorReply(503, "overloaded", type="server_error")
    groups = [
        {
            "id": "chat",
            "deployments": [deployment("a", fake_openai_url, "up-a")],
            "fallbacks": ["backup"],
        },
        {"id": "backup", "deployments": [deployment("b", fake_openai_url, "up-b")]},
    ]
    settings = remote_settings(
        keel_home, [], groups=groups, routing={"retry": FAST_RETRY}, cache={"enabled": False}
    )
    async with running_app(settings) as (app, client):
        response = await client.post("/v1/chat/completions", json=chat(model="chat"))
        assert response.status_code == 200
        found = await trace_of(app, client, response.headers["x-keel-request-id"])
    attempts = sorted(
        (span for span in found["spans"] if span["kind"] == "client"),
        key=lambda span: span["attributes"]["keel.attempt"],
    )
    # Two attempts on a (max_attempts 2), then the fallback group's b.
    assert [
        (s["name"], s["attributes"]["keel.group"], s["attributes"]["keel.outcome"], s["status"])
        for s in attempts
    ] == [
        ("chat up-a", "chat", "unavailable", "error"),
        ("chat up-a", "chat", "unavailable", "error"),
        ("chat up-b", "backup", "ok", "unset"),
    ]
    assert "overloaded" in attempts[0]["status_message"]
    assert attempts[0]["attributes"]["error.type"] == "unavailable"
    # In the order they ran: none starts before the one before it ended.
    for before, after in itertools.pairwise(attempts):
        assert moment(before["end_time"]) <= moment(after["start_time"])
    root = found["spans"][0]
    assert root["attributes"]["keel.attempts"] == 3
    assert root["attributes"]["keel.deployment"] == "b"


async def test_a_cache_hit_has_a_lookup_span_and_no_attempt(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    settings = settings_for(
        keel_home, fake_openai_url, cache={"enabled": True, "persistent": False}
    )
    async with running_app(settings) as (app, client):
        # Only deterministic requests (temperature 0) are cached by default.
        first = await client.post("/v1/chat/completions", json=chat(temperature=0))
        await app.state.keel.gateway.caching.flush()  # the answer is stored in the background
        second = await client.post("/v1/chat/completions", json=chat(temperature=0))
        assert (first.headers["x-keel-cache"], second.headers["x-keel-cache"]) == ("miss", "hit")
        missed = await trace_of(app, client, first.headers["x-keel-request-id"])
        hit = await trace_of(app, client, second.headers["x-keel-request-id"])
    assert one(missed, "keel.cache.lookup")["attributes"]["keel.cache.result"] == "miss"
    assert len(by_name(missed, "chat up-model")) == 1
    lookup = one(hit, "keel.cache.lookup")
    assert lookup["attributes"]["keel.cache.result"] == "hit"
    assert lookup["parent_span_id"] == hit["spans"][0]["span_id"]
    assert [span for span in hit["spans"] if span["kind"] == "client"] == []
    root = hit["spans"][0]["attributes"]
    assert (root["keel.cache"], root["keel.cost_usd"], root["gen_ai.usage.output_tokens"]) == (
        "hit",
        0.0,
        3,
    )


async def test_a_guardrail_block_is_an_error_span_naming_the_rule(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    rules = [{"name": "no-acme", "kind": "deny_list", "terms": ["acme"], "action": "block"}]
    settings = settings_for(keel_home, fake_openai_url, guardrails={"rules": rules})
    async with running_app(settings) as (app, client):
        allowed = await client.post("/v1/chat/completions", json=chat("hello"))
        blocked = await client.post("/v1/chat/completions", json=chat("tell me about ACME"))
        assert (allowed.status_code, blocked.status_code) == (200, 400)
        assert blocked.headers["x-keel-trace-id"]
        passed = await trace_of(app, client, allowed.headers["x-keel-request-id"])
        found = await trace_of(app, client, blocked.headers["x-keel-request-id"])
    screened = one(passed, "keel.guardrails.input")
    assert screened["status"] == "unset"
    assert screened["attributes"]["keel.guardrails.stage"] == "input"
    assert one(passed, "keel.guardrails.output")["status"] == "unset"

    guard = one(found, "keel.guardrails.input")
    assert guard["status"] == "error"
    assert guard["attributes"]["keel.guardrails.blocked"] == "no-acme"
    assert guard["attributes"]["error.type"] == "guardrail_blocked"
    assert "no-acme" in guard["status_message"]
    assert guard["attributes"]["keel.guardrails.rules"] == ["no-acme"]
    decision = guard["attributes"]["keel.guardrails.decisions"][0]
    assert (decision["rule"], decision["action"]) == ("no-acme", "block")
    assert [span for span in found["spans"] if span["kind"] == "client"] == []
    root = found["spans"][0]
    assert root["status"] == "error"
    assert root["attributes"]["http.response.status_code"] == 400
    assert root["attributes"]["error.type"] == "invalid_request_error"


async def test_a_quota_check_is_a_span_and_a_refusal_an_error_span(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    admin_key = "trace-test-admin-key-0123456789abcdef"
    settings = settings_for(keel_home, fake_openai_url, auth={"admin_key": admin_key})
    async with running_app(settings) as (app, client):
        keel = app.state.keel
        keel.directory.create_user("quota-user", role="developer")
        _, secret = keel.directory.create_key(
            "quota-user",
            name="k",
            created_by=Actor("admin-key", frozenset({"admin"}), kind="bootstrap"),
            limits={"rpm": 1},
        )
        await keel.access.refresh()
        key = {"authorization": f"Bearer {secret}"}
        admitted = await client.post("/v1/chat/completions", json=chat(), headers=key)
        refused = await client.post("/v1/chat/completions", json=chat(), headers=key)
        assert (admitted.status_code, refused.status_code) == (200, 429)
        await keel.recorder.flush()
        await keel.tracing.flush()
        admin = {"authorization": f"Bearer {admin_key}"}
        traces = []
        for response in (admitted, refused):
            found = await client.get(
                f"/v1/keel/requests/{response.headers['x-keel-request-id']}/trace", headers=admin
            )
            assert found.status_code == 200, found.text
            traces.append(found.json())
    checked = one(traces[0], "keel.quota.reserve")
    assert checked["status"] == "unset"
    assert checked["attributes"]["keel.quota.estimated_tokens"] > 0
    assert len(by_name(traces[0], "chat up-model")) == 1
    over = one(traces[1], "keel.quota.reserve")
    assert over["status"] == "error"
    assert over["attributes"]["error.type"] == "quota_exceeded"
    assert "requests per minute (limit 1)" in over["status_message"]
    assert [span for span in traces[1]["spans"] if span["kind"] == "client"] == []
    assert traces[1]["spans"][0]["attributes"]["http.response.status_code"] == 429


async def test_a_stream_has_its_attempt_to_the_end_and_its_finish_reason(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    async with running_app(settings_for(keel_home, fake_openai_url)) as (app, client):
        body = chat(stream=True, stream_options={"include_usage": True})
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            request_id = response.headers["x-keel-request-id"]
            assert response.headers["x-keel-trace-id"] == request_id.removeprefix("req_")
            raw = await response.aread()
        assert raw.endswith(b"data: [DONE]\n\n")
        found = await trace_of(app, client, request_id)
    root = found["spans"][0]
    attributes = root["attributes"]
    assert attributes["gen_ai.request.stream"] is True
    assert attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert attributes["gen_ai.response.model"] == "up-model"
    assert (attributes["gen_ai.usage.input_tokens"], attributes["gen_ai.usage.output_tokens"]) == (
        2,
        3,
    )
    assert attributes["gen_ai.response.time_to_first_chunk"] >= 0
    attempt = one(found, "chat up-model")
    # The answering attempt lasts as long as the upstream streamed: to the end of the call.
    assert attempt["end_time"] == root["end_time"]
    assert attempt["attributes"]["gen_ai.response.time_to_first_chunk"] >= 0


async def test_a_callers_traceparent_is_continued(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    headers = {
        "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01",
        "tracestate": "vendor=abc",
    }
    async with running_app(settings_for(keel_home, fake_openai_url)) as (app, client):
        response = await client.post("/v1/chat/completions", json=chat(), headers=headers)
        assert response.headers["x-keel-trace-id"] == CALLER_TRACE
        version, trace_id, span_id, flags = response.headers["traceparent"].split("-")
        assert (version, trace_id, flags) == ("00", CALLER_TRACE, "01")
        assert span_id != CALLER_SPAN
        found = await trace_of(app, client, response.headers["x-keel-request-id"])
        malformed = await client.post(
            "/v1/chat/completions", json=chat(), headers={"traceparent": "00-xyz-123-01"}
        )
        assert malformed.status_code == 200
        assert malformed.headers["x-keel-trace-id"] != CALLER_TRACE
    assert found["trace_id"] == CALLER_TRACE
    root = found["spans"][0]
    assert (root["span_id"], root["parent_span_id"]) == (span_id, CALLER_SPAN)
    assert all(
        span["parent_span_id"] == span_id for span in found["spans"][1:]
    )  # everything else hangs under Keel's root


def test_traceparent_parsing_follows_the_w3c_rules() -> None:
    valid = continue_trace({"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"})
    assert (valid.trace_id, valid.parent_span_id, valid.sampled) == (
        CALLER_TRACE,
        CALLER_SPAN,
        False,
    )
    # A later version may carry more fields; version 00 may not.
    future = continue_trace({"traceparent": f"01-{CALLER_TRACE}-{CALLER_SPAN}-01-extra"})
    assert future.parent_span_id == CALLER_SPAN
    fallback = "0123456789abcdef0123456789abcdef"
    for bad in (
        f"00-{CALLER_TRACE}-{CALLER_SPAN}-01-extra",
        f"ff-{CALLER_TRACE}-{CALLER_SPAN}-01",
        f"00-{'0' * 32}-{CALLER_SPAN}-01",
        f"00-{CALLER_TRACE}-{'0' * 16}-01",
        f"00-{CALLER_TRACE[:-1]}-{CALLER_SPAN}-01",
        f"00-{CALLER_TRACE}-{CALLER_SPAN}-zz",
        "",
    ):
        started = continue_trace({"traceparent": bad}, fallback)
        assert (started.trace_id, started.parent_span_id) == (fallback, None), bad


async def test_content_is_captured_only_when_asked_and_then_masked(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    email = "jane.doe@example.com"
    settings = settings_for(keel_home, fake_openai_url, tracing={"capture_content": True})
    async with running_app(settings) as (app, client):
        response = await client.post(
            "/v1/chat/completions",
            json={
                "model": "gpt-test",
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": f"write to {email}"},
                ],
            },
        )
        assert response.status_code == 200
        found = await trace_of(app, client, response.headers["x-keel-request-id"])
    root = found["spans"][0]["attributes"]
    assert email not in json.dumps(found)
    inputs = json.loads(root["gen_ai.input.messages"])
    assert inputs == [
        {"role": "system", "parts": [{"type": "text", "content": "be brief"}]},
        {"role": "user", "parts": [{"type": "text", "content": "write to <EMAIL_ADDRESS>"}]},
    ]
    outputs = json.loads(root["gen_ai.output.messages"])
    assert outputs == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": "Echo: write to <EMAIL_ADDRESS>"}],
            "finish_reason": "stop",
        }
    ]


async def test_error_messages_on_spans_are_masked(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    fake_openai.faults["up-model"] = ErrorReply(400, "bad input from jane.doe@example.com")
    async with running_app(settings_for(keel_home, fake_openai_url)) as (app, client):
        response = await client.post("/v1/chat/completions", json=chat())
        assert response.status_code == 400
        found = await trace_of(app, client, response.headers["x-keel-request-id"])
    assert "jane.doe" not in json.dumps(found)
    assert "<EMAIL_ADDRESS>" in found["spans"][0]["status_message"]
    assert one(found, "chat up-model")["status"] == "error"


async def test_traces_that_cannot_be_shown_are_clear_404s(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    async with running_app(settings_for(keel_home, fake_openai_url)) as (_, client):
        missing = await client.get("/v1/keel/requests/req_nope/trace")
        assert missing.status_code == 404
        error = missing.json()["error"]
        assert "req_nope" in error["message"] and error["code"] == "not_found"
        assert (await client.get("/v1/keel/requests/a%00b/trace")).status_code == 400
        assert (await client.get(f"/v1/keel/requests/{'x' * 300}/trace")).status_code == 404

    settings = settings_for(keel_home, fake_openai_url, tracing={"enabled": False})
    async with running_app(settings) as (app, client):
        response = await client.post("/v1/chat/completions", json=chat())
        assert "x-keel-trace-id" not in response.headers
        assert "traceparent" not in response.headers
        await app.state.keel.recorder.flush()
        off = await client.get(f"/v1/keel/requests/{response.headers['x-keel-request-id']}/trace")
        assert off.status_code == 404
        assert "tracing.enabled" in off.json()["error"]["message"]


async def test_spans_older_than_the_retention_are_swept(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    settings = settings_for(keel_home, fake_openai_url, tracing={"retention_days": 7})
    async with running_app(settings) as (app, _):
        tracing = app.state.keel.tracing
        now = datetime.now(UTC)
        for age_days, request_id in ((8, "req_old"), (6, "req_recent")):
            started = wall_ns(now - timedelta(days=age_days))
            tree = SpanTree("invoke_workflow nightly", start_ns=started, request_id=request_id)
            tree.add("execute_tool fetch", start_ns=started, end_ns=started + 5_000_000)
            tracing.emit(tree.finish(end_ns=started + 9_000_000))
        await tracing.flush()
        # The sweep at start may already have taken the old spans: how many go here varies.
        assert await tracing.sweep() in (0, 2)
        assert [len(await tracing.spans_of(r)) for r in ("req_old", "req_recent")] == [0, 2]
        recent = await tracing.spans_of("req_recent")
        assert [(s["name"], s["duration_ms"]) for s in recent] == [
            ("invoke_workflow nightly", 9.0),
            ("execute_tool fetch", 5.0),
        ]


async def test_the_background_sweep_deletes_old_spans(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    old = wall_ns(datetime.now(UTC) - timedelta(days=30))
    keep_all = settings_for(keel_home, fake_openai_url, tracing={"retention_days": 3650})
    async with running_app(keep_all) as (app, _):
        app.state.keel.tracing.emit(SpanTree("old", start_ns=old, request_id="req_old").finish())
        await app.state.keel.tracing.flush()
        assert len(await app.state.keel.tracing.spans_of("req_old")) == 1
    # Restarted on the same database: the sweep runs at start, then every interval.
    tracing = {"retention_days": 7, "sweep_interval_s": 0.05}
    async with running_app(settings_for(keel_home, fake_openai_url, tracing=tracing)) as (app, _):
        deadline = datetime.now(UTC) + timedelta(seconds=30)
        while await app.state.keel.tracing.spans_of("req_old"):
            assert datetime.now(UTC) < deadline, "the old span was never swept"
            await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("otlp", "expected"),
    [
        ({"endpoint": "collector:4318"}, "OTLP over HTTP needs the full traces URL"),
        ({"endpoint": "http://c:4317/v1/traces", "protocol": "grpc"}, "needs host:port"),
        ({"endpoint": "http://c:4318", "protocol": "udp"}, "tracing.otlp.protocol"),
        ({"timeout_s": 0}, "tracing.otlp.timeout_s"),
    ],
)
def test_bad_tracing_settings_name_the_field(
    otlp: dict[str, Any], expected: str, tmp_path: Path
) -> None:
    path = tmp_path / "keel.yaml"
    path.write_text(json.dumps({"tracing": {"otlp": otlp}}), encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_settings(path)
    assert "tracing.otlp" in str(refused.value) and expected in str(refused.value)


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_spans_are_kept_in_postgresql(
    backend: str,
    postgres_url: str,
    keel_home: Path,
    fake_openai: FakeOpenAI,
    fake_openai_url: str,
) -> None:
    settings = settings_for(
        keel_home, fake_openai_url, database_url=postgres_url, tracing={"capture_content": True}
    )
    async with running_app(settings) as (app, client):
        assert app.state.keel.database.backend == backend
        response = await client.post("/v1/chat/completions", json=chat(content="nul \x00 here"))
        assert response.status_code == 200
        found = await trace_of(app, client, response.headers["x-keel-request-id"])
        assert [span["name"] for span in found["spans"]] == ["chat gpt-test", "chat up-model"]
        root = found["spans"][0]["attributes"]
        # "Echo: nul \x00 here": four words (NUL is no space). The content attribute is JSON
        # text, where NUL is an escape PostgreSQL accepts: the prompt comes back as sent.
        assert root["gen_ai.usage.output_tokens"] == 4
        assert (
            json.loads(root["gen_ai.input.messages"])[0]["parts"][0]["content"] == "nul \x00 here"
        )
        assert await app.state.keel.tracing.sweep() == 0
