"""Failures end to end: groups of deployments on the fake upstream, through the in-process app.

Each deployment is a different upstream model name on the same fake server, so per-model faults
(`fake.faults[...]`) make one deployment fail while another answers. Every test checks what the
client sees, what reached the upstream, and that exactly one request record tells the story.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from keel.config_loading import load_settings
from keel.errors import ConfigError
from keel.gateway import Call
from tests.conftest import flushed_records, remote_settings, running_app
from tests.fakes.openai import (
    CutStream,
    ErrorReply,
    FakeOpenAI,
    Hang,
    Malformed,
    Reset,
    Scripted,
)

# Fast retries and a breaker that stays closed unless a test asks otherwise.
FAST_RETRY = {"max_attempts": 3, "backoff_initial_s": 0.01, "backoff_max_s": 0.02, "deadline_s": 10}
ROUTING = {"retry": FAST_RETRY, "circuit": {"failure_threshold": 5, "cooldown_s": 30}}

CONTEXT_MESSAGE = (
    "This model's maximum context length is 8192 tokens. However, your messages resulted in "
    "9001 tokens. Please reduce the length of the messages."
)


def upstream(deployment_id: str) -> str:
    return f"up-{deployment_id}"


def dep(deployment_id: str, url: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": deployment_id,
        "provider": "openai",
        "model": upstream(deployment_id),
        "api_base": url,
        "api_key": "sk-test",
        "timeout_s": 5,
        **extra,
    }


def priority_group(group_id: str, url: str, *deployment_ids: str, **extra: Any) -> dict[str, Any]:
    """A group whose deployments are tried in the order given (one tier each)."""
    return {
        "id": group_id,
        "strategy": "priority",
        "deployments": [
            dep(deployment_id, url, tier=tier)
            for tier, deployment_id in enumerate(deployment_ids, 1)
        ],
        **extra,
    }


@asynccontextmanager
async def keel_with(
    home: Path, groups: list[dict[str, Any]], routing: dict[str, Any] | None = None
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    settings = remote_settings(home, [], groups=groups, routing=routing or ROUTING)
    async with running_app(settings) as running:
        yield running


def chat(model: str = "chat", **overrides: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello there"}]} | overrides


def sse_events(raw: str) -> list[str]:
    return [line[len("data: ") :] for line in raw.split("\n\n") if line.startswith("data: ")]


async def only_record(app: FastAPI) -> dict[str, Any]:
    records = await flushed_records(app)
    assert len(records) == 1, records
    return records[0]


async def deployment_states(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    response = await client.get("/v1/keel/deployments")
    assert response.status_code == 200
    return {row["id"]: row for row in response.json()["data"]}


def assert_answered_by(response: httpx.Response, deployment_id: str, attempts: int) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["x-keel-deployment"] == deployment_id
    assert response.headers["x-keel-attempts"] == str(attempts)


# -- a deployment fails: the next one answers ---------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(ErrorReply(500, "boom", type="server_error"), id="500"),
        pytest.param(ErrorReply(503, "overloaded", type="server_error"), id="503"),
        pytest.param(ErrorReply(502, "bad gateway", type="server_error"), id="502"),
        pytest.param(ErrorReply(401, "Incorrect API key"), id="401-upstream-credentials"),
        pytest.param(Reset(), id="connection-reset"),
        pytest.param(Reset(sent_bytes=10), id="reset-mid-body"),
        pytest.param(Malformed(), id="malformed-json"),
        pytest.param(Malformed(b"[1, 2]"), id="json-not-an-object"),
    ],
)
async def test_a_failing_deployment_fails_over_to_the_next(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str, fault: Scripted
) -> None:
    fake_openai.faults[upstream("a")] = fault
    async with keel_with(keel_home, [priority_group("chat", fake_openai_url, "a", "b")]) as (
        app,
        client,
    ):
        response = await client.post("/v1/chat/completions", json=chat())
        assert_answered_by(response, "b", attempts=2)
        assert response.json()["choices"][0]["message"]["content"] == "Echo: hello there"
        assert (fake_openai.count(upstream("a")), fake_openai.count(upstream("b"))) == (1, 1)
        record = await only_record(app)
        assert record["status_code"] == 200
        assert record["deployment"] == "b"
        assert record["upstream_model"] == upstream("b")
        assert record["attempts"] == 2
        assert record["model_requested"] == "chat"
        states = await deployment_states(client)
        assert states["a"]["failures"] == 1 and states["a"]["last_error"] is not None
        assert states["b"]["successes"] == 1


async def test_429_with_retry_after_goes_to_the_next_deployment_and_keeps_off_the_first(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    fake_openai.faults[upstream("a")] = ErrorReply(
        429, "Rate limit reached", type="rate_limit_error", retry_after="30"
    )
    async with keel_with(keel_home, [priority_group("chat", fake_openai_url, "a", "b")]) as (
        app,
        client,
    ):
        first = await client.post("/v1/chat/completions", json=chat())
        assert_answered_by(first, "b", attempts=2)
        # a asked for 30 s of quiet: the next request goes straight to b, although a is tier 1
        second = await client.post("/v1/chat/completions", json=chat())
        assert_answered_by(second, "b", attempts=1)
        assert fake_openai.count(upstream("a")) == 1
        assert fake_openai.count(upstream("b")) == 2
        states = await deployment_states(client)
        assert states["a"]["state"] == "closed"  # rate limited, not broken
        assert states["a"]["cooldown_remaining_s"] > 20
        records = await flushed_records(app)
        assert sorted((r["attempts"], r["deployment"], r["status_code"]) for r in records) == [
            (1, "b", 200),
            (2, "b", 200),
        ]


async def test_429_on_the_only_deployment_is_retried_there_after_retry_after(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    fake_openai.then(ErrorReply(429, "slow down", type="rate_limit_error", retry_after="0.2"))
    async with keel_with(keel_home, [priority_group("chat", fake_openai_url, "a")]) as (
        app,
        client,
    ):
        response = await client.post("/v1/chat/completions", json=chat())
        assert_answered_by(response, "a", attempts=2)
        assert fake_openai.count(upstream("a")) == 2
        # Not a duration check: the retry cannot have been sent before the Retry-After passed.
        first, second = fake_openai.requests
        assert second.received_at - first.received_at >= 0.19
        record = await only_record(app)
        assert (record["status_code"], record["deployment"], record["attempts"]) == (200, "a", 2)


@pytest.mark.parametrize("status", [500, 503])
async def test_a_server_error_on_the_only_deployment_is_retried(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str, status: int
) -> None:
    fake_openai.then(ErrorReply(status, "try again", type="server_error"))
    async with keel_with(keel_home, [priority_group("chat", fake_openai_url, "a")]) as (
        app,
        client,
    ):
        response = await client.post("/v1/chat/completions", json=chat())
        assert_answered_by(response, "a", attempts=2)
        assert fake_openai.count(upstream("a")) == 2
        record = await only_record(app)
        assert (record["status_code"], record["deployment"], record["attempts"]) == (200, "a", 2)


async def test_a_hang_past_the_deployment_timeout_fails_over(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    fake_openai.faults[upstream("a")] = Hang(3.0)
    group = priority_group("chat", fake_openai_url, "a", "b")
    group["deployments"][0]["timeout_s"] = 0.3
    async with keel_with(keel_home, [group]) as (app, client):
        response = await client.post("/v1/chat/completions", json=chat())
        assert_answered_by(response, "b", attempts=2)
        record = await only_record(app)
        assert (record["status_code"], record["deployment"], record["attempts"]) == (200, "b", 2)
        assert (await deployment_states(client))["a"]["last_error"] == "timeout"


async def test_a_slow_deployment_is_timed_out_by_its_own_timeout(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    fake_openai.delays[upstream("a")] = 3.0
    group = priority_group("chat", fake_openai_url, "a", "b")
    group["deployments"][0]["timeout_s"] = 0.3
    async with keel_with(keel_home, [group]) as (app, client):
        response = await client.post("/v1/embeddings", json={"model": "chat", "input": "hi"})
        assert_answered_by(response, "b", attempts=2)
        record = await only_record(app)
        assert (record["endpoint"], record["deployment"], record["attempts"]) == (
            "embeddings",
            "b",
            2,
        )


# -- the request's fault: no retry ----------------------------------------------------------------


async def test_a_400_from_upstream_is_not_retried(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    fake_openai.faults[upstream("a")] = ErrorReply(400, "'temperature' must be at most 2")
    async with keel_with(keel_home, [priority_group("chat", fake_openai_url, "a", "b")]) as (
        app,
        client,
    ):
        response = await client.post("/v1/chat/completions", json=chat(temperature=1))
        assert response.status_code == 400
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert "temperature" in response.json()["error"]["message"]
        assert response.headers["x-keel-attempts"] == "1"
        assert response.headers["x-keel-deployment"] == "a"
        assert (fake_openai.count(upstream("a")), fake_openai.count(upstream("b"))) == (1, 0)
        record = await only_record(app)
        assert (record["status_code"], record["deployment"], record["attempts"]) == (400, "a", 1)
        # the request's fault is not the deployment's
        states = await deployment_states(client)
        assert states["a"]["failures"] == 0 and states["a"]["in_flight"] == 0


async def test_a_context_window_error_without_a_fallback_reaches_the_client(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    fake_openai.faults[upstream("a")] = ErrorReply(400, CONTEXT_MESSAGE)
    async with keel_with(keel_home, [priority_group("chat", fake_openai_url, "a", "b")]) as (
        app,
        client,
    ):
        response = await client.post("/v1/chat/completions", json=chat())
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "context_length_exceeded"
        assert fake_openai.count(upstream("b")) == 0
        record = await only_record(app)
        assert (record["status_code"], record["attempts"]) == (400, 1)


# -- streams ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(ErrorReply(503, "overloaded", type="server_error"), id="503"),
        pytest.param(Reset(), id="reset"),
        pytest.param(CutStream(after_chunks=0), id="cut-before-first-chunk"),
        pytest.param(Malformed(), id="not-a-stream"),
    ],
)
async def test_a_stream_failing_before_its_first_chunk_fails_over_transparently(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str, fault: Scripted
) -> None:
    fake_openai.faults[upstream("a")] = fault
    async with keel_with(keel_home, [priority_group("chat", fake_openai_url, "a", "b")]) as (
        app,
        client,
    ):
        response = await client.post("/v1/chat/completions", json=chat(stream=True))
        assert_answered_by(response, "b", attempts=2)
        events = sse_events(response.text)
        assert events[-1] == "[DONE]"
        chunks = [json.loads(event) for event in events[:-1]]
        assert all("error" not in chunk for chunk in chunks)
        assert all(chunk["model"] == upstream("b") for chunk in chunks)
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        assert text.strip() == "Echo: hello there"
        record = await only_record(app)
        assert record["stream"]
        assert (record["status_code"], record["deployment"], record["attempts"]) == (200, "b", 2)
        assert record["completion_tokens"] == 3


async def test_a_stream_cut_after_tokens_ends_with_an_error_event_and_no_retry(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    fake_openai.faults[upstream("a")] = CutStream(after_chunks=3)
    async with keel_with(keel_home, [priority_group("chat", fake_openai_url, "a", "b")]) as (
        app,
        client,
    ):
        response = await client.post("/v1/chat/completions", json=chat(stream=True))
        assert_answered_by(response, "a", attempts=1)
        events = sse_events(response.text)
        assert "[DONE]" not in events
        *chunks, last = (json.loads(event) for event in events)
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        assert text.strip() == "Echo: hello"  # what was sent stays sent; nothing is replayed
        assert last["error"]["type"] == "upstream_error"
        assert fake_openai.count(upstream("b")) == 0
        record = await only_record(app)
        assert (record["status_code"], record["deployment"], record["attempts"]) == (502, "a", 1)
        assert record["error_type"] == "upstream_error"


# -- special fallbacks --------------------------------------------------------------------------


async def test_context_window_exceeded_goes_to_the_context_window_fallback(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    fake_openai.faults[upstream("small")] = ErrorReply(
        400, CONTEXT_MESSAGE, code="context_length_exceeded"
    )
    groups = [
        priority_group("chat", fake_openai_url, "small", context_window_fallback="long"),
        priority_group("long", fake_openai_url, "big"),
    ]
    async with keel_with(keel_home, groups) as (app, client):
        response = await client.post("/v1/chat/completions", json=chat())
        assert_answered_by(response, "big", attempts=2)
        assert (fake_openai.count(upstream("small")), fake_openai.count(upstream("big"))) == (1, 1)
        record = await only_record(app)
        assert record["model_requested"] == "chat"
        assert (record["status_code"], record["deployment"], record["attempts"]) == (200, "big", 2)
        # asking too much of a model is not the model's failure
        assert (await deployment_states(client))["small"]["failures"] == 0


async def test_content_policy_refusal_goes_to_the_content_policy_fallback(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    fake_openai.faults[upstream("strict")] = ErrorReply(
        400,
        "Your request was rejected: it may violate our content policy.",
        code="content_policy_violation",
    )
    groups = [
        priority_group("chat", fake_openai_url, "strict", "other", content_policy_fallback="open"),
        priority_group("open", fake_openai_url, "lenient"),
    ]
    async with keel_with(keel_home, groups) as (app, client):
        response = await client.post("/v1/chat/completions", json=chat())
        assert_answered_by(response, "lenient", attempts=2)
        # a refusal is not retried inside the group: it goes straight to the special fallback
        assert fake_openai.count(upstream("other")) == 0
        record = await only_record(app)
        assert (record["status_code"], record["deployment"], record["attempts"]) == (
            200,
            "lenient",
            2,
        )


async def test_content_policy_is_recognised_by_the_error_code_alone(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    fake_openai.faults[upstream("strict")] = ErrorReply(
        400, "Your request was rejected.", code="content_policy_violation"
    )
    groups = [
        priority_group("chat", fake_openai_url, "strict", content_policy_fallback="open"),
        priority_group("open", fake_openai_url, "lenient"),
    ]
    async with keel_with(keel_home, groups) as (_, client):
        response = await client.post("/v1/chat/completions", json=chat())
        assert_answered_by(response, "lenient", attempts=2)


# -- fallbacks, exhaustion, deadline -----------------------------------------------------------


async def test_fallbacks_are_tried_in_order_when_the_group_is_exhausted(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    for name in ("a", "b", "c"):
        fake_openai.faults[upstream(name)] = ErrorReply(503, "overloaded", type="server_error")
    groups = [
        priority_group("chat", fake_openai_url, "a", "b", fallbacks=["second", "third"]),
        priority_group("second", fake_openai_url, "c", retry={**FAST_RETRY, "max_attempts": 1}),
        priority_group("third", fake_openai_url, "d"),
    ]
    async with keel_with(keel_home, groups) as (app, client):
        response = await client.post("/v1/chat/completions", json=chat())
        # chat: a, b, then a retry (3 attempts); second: c (1 attempt); third: d
        assert_answered_by(response, "d", attempts=5)
        counts = {name: fake_openai.count(upstream(name)) for name in "abcd"}
        assert counts["a"] + counts["b"] == 3 and counts["a"] >= 1 and counts["b"] >= 1
        assert (counts["c"], counts["d"]) == (1, 1)
        record = await only_record(app)
        assert (record["status_code"], record["deployment"], record["attempts"]) == (200, "d", 5)


async def test_when_everything_fails_the_last_error_is_raised_with_what_was_tried(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    fake_openai.faults[upstream("a")] = ErrorReply(503, "overloaded", type="server_error")
    fake_openai.faults[upstream("b")] = Reset()
    fake_openai.faults[upstream("c")] = ErrorReply(
        429, "quota exceeded", type="rate_limit_error", retry_after="60"
    )
    groups = [
        priority_group(
            "chat",
            fake_openai_url,
            "a",
            "b",
            fallbacks=["backup"],
            retry={**FAST_RETRY, "max_attempts": 2},
        ),
        priority_group("backup", fake_openai_url, "c"),
    ]
    async with keel_with(keel_home, groups) as (app, client):
        response = await client.post("/v1/chat/completions", json=chat())
        # the last error was c's 429: its class, status and Retry-After reach the client
        assert response.status_code == 429
        assert response.headers["retry-after"] == "60"
        error = response.json()["error"]
        assert error["type"] == "rate_limit_error"
        message = error["message"]
        assert "quota exceeded" in message
        assert "tried: a (unavailable), b (connection), c (rate_limit)" in message
        assert response.headers["x-keel-attempts"] == "3"
        assert response.headers["x-keel-deployment"] == "c"
        record = await only_record(app)
        assert (record["status_code"], record["deployment"], record["attempts"]) == (429, "c", 3)
        assert record["error_type"] == "rate_limit_error"


async def test_exhaustion_keeps_the_class_of_a_server_error(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    fake_openai.faults[upstream("a")] = ErrorReply(500, "internal", type="server_error")
    async with keel_with(keel_home, [priority_group("chat", fake_openai_url, "a")]) as (
        app,
        client,
    ):
        response = await client.post("/v1/chat/completions", json=chat())
        assert response.status_code == 502
        error = response.json()["error"]
        assert (error["type"], error["code"]) == ("upstream_error", "upstream_error")
        assert error["message"].endswith(
            "tried: a (server_error), a (server_error), a (server_error)"
        )
        assert fake_openai.count(upstream("a")) == 3
        record = await only_record(app)
        assert (record["status_code"], record["deployment"], record["attempts"]) == (502, "a", 3)


async def test_the_request_deadline_gives_504(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    fake_openai.delays[upstream("a")] = 3.0
    fake_openai.delays[upstream("b")] = 3.0
    groups = [
        priority_group(
            "chat",
            fake_openai_url,
            "a",
            "b",
            fallbacks=["backup"],
            retry={**FAST_RETRY, "deadline_s": 0.3},
        ),
        priority_group("backup", fake_openai_url, "c"),
    ]
    async with keel_with(keel_home, groups) as (app, client):
        response = await client.post("/v1/chat/completions", json=chat())
        assert response.status_code == 504
        error = response.json()["error"]
        assert error["code"] == "upstream_timeout"
        assert "deadline" in error["message"]
        # the deadline covers the whole request: no second deployment, no fallback
        assert fake_openai.count(upstream("b")) == 0
        assert fake_openai.count(upstream("c")) == 0
        record = await only_record(app)
        assert (record["status_code"], record["deployment"], record["attempts"]) == (504, "a", 1)


async def test_a_stream_whose_deployments_all_fail_before_a_chunk_gets_a_real_status(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    fake_openai.faults[upstream("a")] = Reset()
    fake_openai.faults[upstream("b")] = ErrorReply(503, "overloaded", type="server_error")
    group = priority_group(
        "chat", fake_openai_url, "a", "b", retry={**FAST_RETRY, "max_attempts": 2}
    )
    async with keel_with(keel_home, [group]) as (app, client):
        response = await client.post("/v1/chat/completions", json=chat(stream=True))
        assert response.status_code == 503
        assert response.headers["content-type"].startswith("application/json")
        assert response.json()["error"]["message"].endswith(
            "tried: a (connection), b (unavailable)"
        )
        record = await only_record(app)
        assert record["stream"]
        assert (record["status_code"], record["deployment"], record["attempts"]) == (503, "b", 2)


async def test_no_available_deployment_is_a_503_without_an_upstream_call(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    fake_openai.faults[upstream("a")] = ErrorReply(500, "broken", type="server_error")
    routing = {"retry": FAST_RETRY, "circuit": {"failure_threshold": 1, "cooldown_s": 30}}
    async with keel_with(keel_home, [priority_group("chat", fake_openai_url, "a")], routing) as (
        app,
        client,
    ):
        first = await client.post("/v1/chat/completions", json=chat())
        assert first.status_code == 502
        assert first.headers["x-keel-attempts"] == "1"  # the circuit opened on the first failure
        second = await client.post("/v1/chat/completions", json=chat())
        assert second.status_code == 503
        assert "no deployment of 'chat' is available" in second.json()["error"]["message"]
        assert fake_openai.count(upstream("a")) == 1
        records = await flushed_records(app)
        assert sorted((r["status_code"], r["attempts"]) for r in records) == [(502, 1), (503, 0)]


async def test_an_unavailable_fallback_does_not_hide_the_last_real_error(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    fake_openai.faults[upstream("c")] = ErrorReply(500, "broken", type="server_error")
    routing = {"retry": FAST_RETRY, "circuit": {"failure_threshold": 1, "cooldown_s": 30}}
    groups = [
        priority_group("chat", fake_openai_url, "a", fallbacks=["backup"]),
        priority_group("backup", fake_openai_url, "c"),
    ]
    async with keel_with(keel_home, groups, routing) as (_, client):
        # c fails once and its circuit opens: the backup group has nothing to offer for 30 s
        assert (await client.post("/v1/chat/completions", json=chat("backup"))).status_code == 502
        assert (await deployment_states(client))["c"]["state"] == "open"
        fake_openai.faults[upstream("a")] = ErrorReply(
            429, "quota exceeded", type="rate_limit_error", retry_after="60"
        )
        response = await client.post("/v1/chat/completions", json=chat())
        assert fake_openai.count(upstream("c")) == 1
        assert response.status_code == 429, response.text
        assert response.headers["retry-after"] == "60"
        assert "quota exceeded" in response.json()["error"]["message"]


async def test_streams_cut_mid_answer_count_against_the_deployment(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    fake_openai.faults[upstream("a")] = CutStream(after_chunks=2)
    routing = {"retry": FAST_RETRY, "circuit": {"failure_threshold": 2, "cooldown_s": 30}}
    group = priority_group("chat", fake_openai_url, "a", "b")
    async with keel_with(keel_home, [group], routing) as (_, client):
        for _ in range(3):
            await client.post("/v1/chat/completions", json=chat(stream=True))
        states = await deployment_states(client)
        assert states["a"]["failures"] == 2
        assert states["a"]["state"] == "open"
        assert fake_openai.count(upstream("a")) == 2


async def test_an_open_stream_counts_as_in_flight(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    group = priority_group("chat", fake_openai_url, "a")
    async with keel_with(keel_home, [group]) as (app, _):
        keel = app.state.keel
        body = json.dumps(chat(stream=True)).encode()

        async def source() -> bytes:
            return body

        reply = await keel.gateway.chat_completions(source, Call(endpoint="chat.completions"))
        assert reply.stream is not None
        try:
            await anext(reply.stream)  # the first chunk is with the client; the rest is not
            [row] = [row for row in keel.router.deployments() if row["id"] == "a"]
            assert row["in_flight"] == 1
        finally:
            await reply.stream.aclose()  # type: ignore[attr-defined]


# -- circuit breaker --------------------------------------------------------------------------


async def test_the_circuit_breaker_takes_a_failing_deployment_out_and_probes_it_back(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    fake_openai.faults[upstream("a")] = ErrorReply(503, "overloaded", type="server_error")
    routing = {
        "retry": FAST_RETRY,
        "circuit": {"failure_threshold": 2, "window_s": 30, "cooldown_s": 0.5},
    }
    group = priority_group("chat", fake_openai_url, "a", "b")
    async with keel_with(keel_home, [group], routing) as (app, client):
        for _ in range(2):
            assert_answered_by(await client.post("/v1/chat/completions", json=chat()), "b", 2)
        assert fake_openai.count(upstream("a")) == 2
        states = await deployment_states(client)
        assert states["a"]["state"] == "open"
        assert states["a"]["recent_failures"] == 2
        assert states["b"]["state"] == "closed"

        # open: no request reaches a, although it is tier 1
        for _ in range(5):
            assert_answered_by(await client.post("/v1/chat/completions", json=chat()), "b", 1)
        assert fake_openai.count(upstream("a")) == 2

        # a recovers; after the cooldown one probe goes to it (slow, so others overlap it)
        del fake_openai.faults[upstream("a")]
        fake_openai.delays[upstream("a")] = 0.3
        await asyncio.sleep(0.6)
        assert (await deployment_states(client))["a"]["state"] == "half_open"
        responses = await asyncio.gather(
            *(client.post("/v1/chat/completions", json=chat()) for _ in range(5))
        )
        assert all(r.status_code == 200 for r in responses)
        assert sorted(r.headers["x-keel-deployment"] for r in responses) == ["a"] + ["b"] * 4
        assert fake_openai.count(upstream("a")) == 3

        # the probe succeeded: a is back, and takes tier-1 traffic again
        assert (await deployment_states(client))["a"]["state"] == "closed"
        assert_answered_by(await client.post("/v1/chat/completions", json=chat()), "a", 1)

        records = await flushed_records(app)
        assert len(records) == 2 + 5 + 5 + 1
        assert sum(r["attempts"] for r in records) == len(records) + 2


async def test_a_failed_probe_opens_the_circuit_again(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    fake_openai.faults[upstream("a")] = ErrorReply(500, "still broken", type="server_error")
    routing = {
        "retry": FAST_RETRY,
        "circuit": {"failure_threshold": 1, "window_s": 30, "cooldown_s": 0.3},
    }
    async with keel_with(
        keel_home, [priority_group("chat", fake_openai_url, "a", "b")], routing
    ) as (
        _,
        client,
    ):
        assert_answered_by(await client.post("/v1/chat/completions", json=chat()), "b", 2)
        assert (await deployment_states(client))["a"]["state"] == "open"
        await asyncio.sleep(0.4)
        # the probe fails and the request still gets its answer from b
        assert_answered_by(await client.post("/v1/chat/completions", json=chat()), "b", 2)
        assert fake_openai.count(upstream("a")) == 2
        assert (await deployment_states(client))["a"]["state"] == "open"
        assert_answered_by(await client.post("/v1/chat/completions", json=chat()), "b", 1)
        assert fake_openai.count(upstream("a")) == 2


# -- concurrency ------------------------------------------------------------------------------


async def test_300_parallel_requests_with_one_dead_deployment_see_no_errors(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    fake_openai.faults[upstream("dead")] = ErrorReply(503, "down", type="server_error")
    group = {
        "id": "chat",
        "strategy": "weighted",
        "deployments": [dep("dead", fake_openai_url), dep("alive", fake_openai_url)],
    }
    async with keel_with(keel_home, [group]) as (app, client):
        responses = await asyncio.gather(
            *(client.post("/v1/chat/completions", json=chat()) for _ in range(300))
        )
        assert [r.status_code for r in responses] == [200] * 300
        assert {r.headers["x-keel-deployment"] for r in responses} == {"alive"}
        dead_calls = fake_openai.count(upstream("dead"))
        assert dead_calls >= 1  # the weighted choice sent it some traffic before it opened
        assert fake_openai.count(upstream("alive")) == 300

        records = await flushed_records(app)
        assert len(records) == 300
        assert len({r["id"] for r in records}) == 300
        assert {(r["status_code"], r["deployment"]) for r in records} == {(200, "alive")}
        assert sum(r["attempts"] for r in records) == 300 + dead_calls
        states = await deployment_states(client)
        assert states["dead"]["state"] == "open"
        assert states["dead"]["in_flight"] == 0 and states["alive"]["in_flight"] == 0


# -- configuration ------------------------------------------------------------------------------


def _group_yaml(group_id: str, deployments: str, extra: str = "") -> str:
    return f"""
  - id: {group_id}
    deployments:{deployments}
{extra}"""


ONE_DEPLOYMENT = """
      - provider: openai
        api_key: sk-x"""


@pytest.mark.parametrize(
    ("groups", "named", "reason"),
    [
        pytest.param(
            _group_yaml("edge-pool", "\n      - provider: no-such-provider"),
            "edge-pool",
            "unknown provider 'no-such-provider'",
            id="unknown-provider",
        ),
        pytest.param(
            _group_yaml("alpha", ONE_DEPLOYMENT, "    fallbacks: [beta]")
            + _group_yaml("beta", ONE_DEPLOYMENT, "    fallbacks: [gamma]")
            + _group_yaml("gamma", ONE_DEPLOYMENT, "    context_window_fallback: alpha"),
            "alpha",
            "cycle",
            id="fallback-cycle",
        ),
        pytest.param(
            _group_yaml("edge-pool", ONE_DEPLOYMENT + "\n        weight: 0"),
            "edge-pool",
            "weight",
            id="zero-weight",
        ),
        pytest.param(
            _group_yaml("edge-pool", ONE_DEPLOYMENT + "\n        weight: -2"),
            "edge-pool",
            "weight",
            id="negative-weight",
        ),
        pytest.param(
            _group_yaml("edge-pool", " []"),
            "edge-pool",
            "deployments",
            id="empty-group",
        ),
        pytest.param(
            _group_yaml("edge-pool", ONE_DEPLOYMENT, "    fallbacks: [nowhere]"),
            "edge-pool",
            "'nowhere' is not a model id",
            id="unknown-fallback",
        ),
        pytest.param(
            _group_yaml("edge-pool", ONE_DEPLOYMENT, "    content_policy_fallback: nowhere"),
            "edge-pool",
            "'nowhere' is not a model id",
            id="unknown-special-fallback",
        ),
    ],
)
def test_bad_group_configuration_is_refused_naming_the_group(
    tmp_path: Path, groups: str, named: str, reason: str
) -> None:
    path = tmp_path / "keel.yaml"
    path.write_text(f"groups:{groups}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    message = raised.value.message
    assert str(path) in message
    assert named in message
    assert reason in message


def test_a_valid_group_configuration_loads(tmp_path: Path) -> None:
    path = tmp_path / "keel.yaml"
    path.write_text(
        "groups:"
        + _group_yaml("alpha", ONE_DEPLOYMENT * 2, "    fallbacks: [beta]")
        + _group_yaml("beta", ONE_DEPLOYMENT)
        + "\n",
        encoding="utf-8",
    )
    settings = load_settings(path)
    assert [d.id for d in settings.groups[0].deployments] == ["alpha-1", "alpha-2"]
    assert settings.groups[0].fallbacks == ["beta"]
