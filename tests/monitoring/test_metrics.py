"""`GET /metrics` after real traffic through the app and the fake upstream: every count below is
worked out by hand from the requests the test sends, never read from Keel's own tables."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from typer.testing import CliRunner

from keel.cli.app import app as cli
from keel.identity import Actor
from keel.sdk import Keel, KeelAPIError
from keel.server import create_app
from tests.conftest import flushed_records, remote_settings, running_app
from tests.fakes.openai import ErrorReply, FakeOpenAI
from tests.fakes.server import serve_on_loopback

ADMIN_KEY = "metrics-test-admin-key-0123456789abcdef"
ADMIN = Actor("admin-key", frozenset({"admin"}), kind="bootstrap")
FAST_RETRY = {"max_attempts": 2, "backoff_initial_s": 0.01, "backoff_max_s": 0.02, "deadline_s": 10}
ROUTING = {"retry": FAST_RETRY, "circuit": {"failure_threshold": 5, "cooldown_s": 30}}
CHAT = "chat.completions"
# USD per 1M tokens, for chat-a's upstream model only.
PRICE_IN, PRICE_OUT = 1.0, 2.0

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _deployment(deployment_id: str, url: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": deployment_id,
        "provider": "openai",
        "model": f"up-{deployment_id}",
        "api_base": url,
        "api_key": "sk-upstream-secret",
        "timeout_s": 5,
        **extra,
    }


def _settings(home: Path, url: str, **extra: Any) -> Any:
    groups = [
        {
            "id": "chat",
            "strategy": "priority",
            "deployments": [
                _deployment("chat-a", url, tier=1),
                _deployment("chat-b", url, tier=2),
            ],
            "fallbacks": ["backup"],
        }
    ]
    options: dict[str, Any] = {
        "groups": groups,
        "routing": ROUTING,
        "auth": {"admin_key": ADMIN_KEY},
        "prices": {"up-chat-a": {"input": PRICE_IN, "output": PRICE_OUT}},
        "guardrails": {
            "rules": [{"name": "no-acme", "kind": "deny_list", "terms": ["acme"]}],
        },
        "cache": {"persistent": False},
        **extra,
    }
    return remote_settings(home, [_deployment("backup", url)], **options)


async def _key(
    app: FastAPI, team: str, role: str = "developer", **grants: Any
) -> tuple[dict[str, str], dict[str, Any], str]:
    directory = app.state.keel.directory
    name = f"user-{uuid.uuid4().hex[:8]}"
    directory.create_user(name, role=role, team=team)
    key, secret = directory.create_key(name, name="k", created_by=ADMIN, **grants)
    await app.state.keel.access.refresh()
    return {"authorization": f"Bearer {secret}"}, key, name


def _chat(content: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": "chat", "messages": [{"role": "user", "content": content}], **extra}


def _samples(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    """The value of the one series with exactly these labels; 0 when it was never exported."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def _total(samples: Samples, name: str, **labels: str) -> float:
    """Summed over every series of `name` whose labels include these."""
    wanted = set(labels.items())
    return sum(value for (n, found), value in samples.items() if n == name and wanted <= found)


def _who(deployment: str, team: str, model: str = "chat") -> dict[str, str]:
    provider = "openai" if deployment else ""
    return {
        "model": model,
        "deployment": deployment,
        "provider": provider,
        "team": team,
        "environment": "production",
    }


async def test_traffic_is_counted_exactly(
    tmp_path: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    async with running_app(_settings(tmp_path, fake_openai_url)) as (app, client):
        keel = app.state.keel
        keel.directory.create_team("blue")
        keel.directory.create_team("red")
        blue, blue_key, blue_user = await _key(app, "blue")
        red, red_key, red_user = await _key(app, "red", limits={"rpm": 1})
        request_ids: list[str] = []
        plain_bytes = 0

        async def post(body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
            nonlocal plain_bytes
            response = await client.post("/v1/chat/completions", json=body, headers=headers)
            request_ids.append(response.headers["x-keel-request-id"])
            if response.status_code == 200 and not body.get("stream"):
                plain_bytes += len(response.content)
            return response

        # 1. Three answers from chat-a. The fake counts a token a word: "hello there" is 2
        # tokens in, "Echo: hello there" 3 out.
        for _ in range(3):
            assert (await post(_chat(), blue)).status_code == 200
        # 2. chat-a fails (503, retried), chat-b answers: one retry.
        fake_openai.faults["up-chat-a"] = ErrorReply(503, "overloaded", type="server_error")
        answered = await post(_chat(), blue)
        assert answered.headers["x-keel-deployment"] == "chat-b"
        # 3. Both fail: the fallback model answers. Two more retries, one fallback.
        fake_openai.faults["up-chat-b"] = ErrorReply(503, "overloaded", type="server_error")
        answered = await post(_chat(), blue)
        assert answered.headers["x-keel-deployment"] == "backup"
        # 4. Everything fails: a 503 after four attempts, the fallback tried last.
        fake_openai.faults["up-backup"] = ErrorReply(503, "overloaded", type="server_error")
        assert (await post(_chat(), blue)).status_code == 503
        fake_openai.faults.clear()
        # 5. A cacheable request twice: a miss (chat-a answers), then a hit.
        cacheable = _chat("cache me", temperature=0)
        assert (await post(cacheable, blue)).headers["x-keel-cache"] == "miss"
        await keel.gateway.caching.flush()
        assert (await post(cacheable, blue)).headers["x-keel-cache"] == "hit"
        # 6. A guardrail blocks the input.
        blocked = await post(_chat("tell me about acme"), blue)
        assert blocked.json()["error"]["code"] == "guardrail_blocked"
        # 7. Red's key may make one request a minute: the second is refused.
        assert (await post(_chat(), red)).status_code == 200
        assert (await post(_chat(), red)).json()["error"]["code"] == "quota_exceeded"
        # 8. A stream from chat-a, with its usage.
        streamed = await post(_chat(stream=True, stream_options={"include_usage": True}), blue)
        assert streamed.status_code == 200
        assert streamed.text.endswith("data: [DONE]\n\n")
        await keel.gateway.drain()
        await keel.audit.flush()
        assert len(await flushed_records(app)) == 12

        viewer, _, _ = await _key(app, "blue", role="viewer")
        scraped = await client.get("/metrics", headers=viewer)
        assert scraped.status_code == 200
        assert scraped.headers["content-type"].startswith("text/plain; version=0.0.4")
        samples = _samples(scraped.text)

    requests = "keel_requests_total"
    chat_2xx = {"endpoint": CHAT, "status_class": "2xx"}
    # chat-a, blue: three in step 1, the cache miss, the stream.
    assert _value(samples, requests, **_who("chat-a", "blue"), **chat_2xx) == 5
    assert _value(samples, requests, **_who("chat-b", "blue"), **chat_2xx) == 1
    assert _value(samples, requests, **_who("backup", "blue"), **chat_2xx) == 1
    assert _value(samples, requests, **_who("chat-a", "red"), **chat_2xx) == 1
    # The cache hit: no deployment answered.
    assert _value(samples, requests, **_who("", "blue"), **chat_2xx) == 1
    five = {"endpoint": CHAT, "status_class": "5xx"}
    assert _value(samples, requests, **_who("backup", "blue"), **five) == 1
    four = {"endpoint": CHAT, "status_class": "4xx"}
    assert _value(samples, requests, **_who("", "blue"), **four) == 1  # the guardrail
    assert _value(samples, requests, **_who("", "red"), **four) == 1  # the quota
    assert _total(samples, requests) == 12

    errors = "keel_request_errors_total"
    assert _total(samples, errors) == 3
    assert _total(samples, errors, error_type="upstream_error", code="upstream_unavailable") == 1
    assert (
        _total(samples, errors, error_type="invalid_request_error", code="guardrail_blocked") == 1
    )
    assert _total(samples, errors, error_type="rate_limit_error", code="quota_exceeded") == 1
    assert (
        _value(
            samples,
            "keel_quota_rejections_total",
            model="chat",
            team="red",
            environment="production",
            reason="exceeded",
        )
        == 1
    )
    assert _total(samples, "keel_quota_rejections_total") == 1
    assert (
        _value(
            samples, "keel_guardrail_actions_total", rule="no-acme", action="block", stage="input"
        )
        == 1
    )

    attempts = "keel_upstream_attempts_total"
    # chat-a answered blue five times and red once.
    assert _value(samples, attempts, model="chat", deployment="chat-a", outcome="ok") == 6
    assert _value(samples, attempts, model="chat", deployment="chat-a", outcome="unavailable") == 3
    assert _value(samples, attempts, model="chat", deployment="chat-b", outcome="ok") == 1
    assert _value(samples, attempts, model="chat", deployment="chat-b", outcome="unavailable") == 2
    assert _value(samples, attempts, model="backup", deployment="backup", outcome="ok") == 1
    assert (
        _value(samples, attempts, model="backup", deployment="backup", outcome="unavailable") == 2
    )
    # Attempts beyond the first: one in step 2, two in step 3, three in step 4 (two on chat,
    # then backup twice: it has two attempts of its own).
    assert _value(samples, "keel_retries_total", model="chat") == 6
    assert _value(samples, "keel_fallbacks_total", model="chat", fallback="backup") == 2

    # Tokens providers processed: eight answers of 2 in and 3 out; the cache hit is not one.
    assert _total(samples, "keel_input_tokens_total") == 16
    assert _total(samples, "keel_output_tokens_total") == 24
    assert _value(samples, "keel_input_tokens_total", **_who("chat-a", "blue")) == 10
    assert _value(samples, "keel_output_tokens_total", **_who("chat-a", "blue")) == 15
    assert _total(samples, "keel_input_cached_tokens_total") == 0
    assert _total(samples, "keel_output_reasoning_tokens_total") == 0
    # Only chat-a has a price: five blue answers and one red, each 2 in and 3 out.
    per_answer = (2 * PRICE_IN + 3 * PRICE_OUT) / 1_000_000
    cost = "keel_cost_usd_total"
    assert _value(samples, cost, **_who("chat-a", "blue")) == pytest.approx(5 * per_answer)
    assert _value(samples, cost, **_who("chat-a", "red")) == pytest.approx(per_answer)
    assert _total(samples, cost) == pytest.approx(6 * per_answer)
    unpriced = "keel_unpriced_requests_total"
    assert _value(samples, unpriced, model="chat", deployment="chat-b") == 1
    assert _value(samples, unpriced, model="chat", deployment="backup") == 1

    assert _value(samples, "keel_cache_requests_total", model="chat", result="miss") == 1
    assert _value(samples, "keel_cache_requests_total", model="chat", result="hit") == 1
    assert _value(samples, "keel_cache_hits_total", cache="exact", tier="memory") == 1
    assert _value(samples, "keel_cache_misses_total", cache="exact") == 1
    assert _value(samples, "keel_cache_stores_total", cache="exact") == 1
    assert _value(samples, "keel_cache_entries") == 1

    duration = "keel_request_duration_seconds_count"
    assert _total(samples, duration) == 12
    assert _value(samples, duration, endpoint=CHAT, model="chat", deployment="chat-a",
                  provider="openai") == 6  # fmt: skip
    # Upstream time: every call that made an attempt (all but the hit, the block, the refusal).
    assert _total(samples, "keel_upstream_duration_seconds_count") == 9
    assert _total(samples, "keel_gateway_overhead_seconds_count") == 12
    # The one stream: a first token, and (3 output tokens) a time per further token.
    assert _total(samples, "keel_time_to_first_token_seconds_count") == 1
    assert _total(samples, "keel_time_per_output_token_seconds_count") == 1
    assert _total(samples, "keel_request_size_bytes_count") == 12
    sizes = "keel_response_size_bytes"
    # Eight non-streamed answers (errors aren't counted) and the stream, byte for byte.
    assert _total(samples, f"{sizes}_count") == 9
    assert _total(samples, f"{sizes}_sum") == plain_bytes + len(streamed.content)

    assert _value(samples, "keel_requests_in_flight") == 0
    assert _value(samples, "keel_records_written_total", writer="requests") == 12
    assert _value(samples, "keel_records_dropped_total", writer="requests") == 0
    assert _value(samples, "keel_records_dropped_total", writer="audit") == 0
    assert _value(samples, "keel_record_queue_depth", writer="requests") == 0
    # Every call is audited, besides whatever else the setup did.
    assert _value(samples, "keel_records_written_total", writer="audit") >= 12
    circuit = "keel_deployment_circuit_state"
    for deployment in ("chat-a", "chat-b"):
        assert _value(samples, circuit, model="chat", deployment=deployment, state="closed") == 1
        assert _value(samples, circuit, model="chat", deployment=deployment, state="open") == 0
    assert _total(samples, "keel_deployment_in_flight_requests") == 0

    # Bounded labels: no key, user, request id or upstream secret ever becomes a label value.
    forbidden = {
        blue_key["id"],
        red_key["id"],
        blue_user,
        red_user,
        "sk-upstream-secret",
        *request_ids,
    }
    values = {value for _, labels in samples for _, value in labels}
    assert not values & forbidden
    names = {name for _, labels in samples for name, _ in labels}
    assert names <= {
        "endpoint", "model", "deployment", "provider", "team", "environment", "status_class",
        "error_type", "code", "result", "outcome", "fallback", "reason", "rule", "action",
        "stage", "writer", "cache", "tier", "state", "version", "le",
    }  # fmt: skip


async def test_a_failing_deployment_opens_its_circuit(
    tmp_path: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    routing = {"retry": {**FAST_RETRY, "max_attempts": 1}, "circuit": {"failure_threshold": 1}}
    settings = remote_settings(tmp_path, [_deployment("solo", fake_openai_url)], routing=routing)
    fake_openai.faults["up-solo"] = ErrorReply(500, "boom", type="server_error")
    async with running_app(settings) as (_app, client):
        body = {"model": "solo", "messages": [{"role": "user", "content": "hi"}]}
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 502
        samples = _samples((await client.get("/metrics")).text)
    circuit = "keel_deployment_circuit_state"
    assert _value(samples, circuit, model="solo", deployment="solo", state="open") == 1
    assert _value(samples, circuit, model="solo", deployment="solo", state="closed") == 0
    assert (
        _value(samples, "keel_upstream_attempts_total", model="solo", deployment="solo",
               outcome="server_error") == 1
    )  # fmt: skip


async def test_openmetrics_when_asked(
    tmp_path: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    settings = remote_settings(tmp_path, [_deployment("solo", fake_openai_url)])
    async with running_app(settings) as (_app, client):
        body = {"model": "solo", "messages": [{"role": "user", "content": "hi"}]}
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
        # What Prometheus itself sends.
        accept = (
            "application/openmetrics-text;version=1.0.0;q=0.5,"
            "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.1"
        )
        response = await client.get("/metrics", headers={"accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")
    families = {family.name: family for family in openmetrics_families(response.text)}
    assert families["keel_requests"].type == "counter"
    assert families["keel_request_duration_seconds"].type == "histogram"
    totals = [s for s in families["keel_requests"].samples if s.name == "keel_requests_total"]
    assert [s.value for s in totals] == [1]


async def test_scraping_needs_a_key_unless_made_public(
    tmp_path: Path, fake_openai_url: str
) -> None:
    models = [_deployment("solo", fake_openai_url)]
    async with running_app(remote_settings(tmp_path, models, auth={"admin_key": ADMIN_KEY})) as (
        app,
        client,
    ):
        refused = await client.get("/metrics")
        assert refused.status_code == 401
        assert refused.json()["error"]["type"] == "authentication_error"
        app.state.keel.directory.create_team("ops")
        viewer, _, _ = await _key(app, "ops", role="viewer")
        assert (await client.get("/metrics", headers=viewer)).status_code == 200
        # A key narrowed to inference routes may not scrape.
        narrow, _, _ = await _key(app, "ops", routes=["inference"])
        assert (await client.get("/metrics", headers=narrow)).status_code == 403

    public = remote_settings(
        tmp_path / "public", models, auth={"admin_key": ADMIN_KEY}, metrics={"public": True}
    )
    async with running_app(public) as (_app, client):
        assert (await client.get("/metrics")).status_code == 200
        # Public is for /metrics alone.
        assert (await client.get("/v1/keel/deployments")).status_code == 401


async def test_metrics_off_is_a_404(
    tmp_path: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    settings = remote_settings(
        tmp_path, [_deployment("solo", fake_openai_url)], metrics={"enabled": False}
    )
    async with running_app(settings) as (app, client):
        body = {"model": "solo", "messages": [{"role": "user", "content": "hi"}]}
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
        response = await client.get("/metrics")
        assert app.state.keel.metrics is None
    assert response.status_code == 404
    error = response.json()["error"]
    assert "metrics.enabled" in error["message"]
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("metrics", "field"),
    [
        ({"duration_buckets_s": [1, 0.5]}, "duration_buckets_s"),
        ({"duration_buckets_s": [-1]}, "duration_buckets_s"),
        ({"enabled": "sometimes"}, "enabled"),
        ({"buckets": [1]}, "buckets"),
    ],
)
def test_bad_settings_name_the_field(tmp_path: Path, metrics: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        remote_settings(tmp_path, [], metrics=metrics)
    assert field in str(raised.value)


async def test_custom_buckets_are_used(
    tmp_path: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    settings = remote_settings(
        tmp_path, [_deployment("solo", fake_openai_url)], metrics={"duration_buckets_s": [2, 7]}
    )
    async with running_app(settings) as (_app, client):
        body = {"model": "solo", "messages": [{"role": "user", "content": "hi"}]}
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
        samples = _samples((await client.get("/metrics")).text)
    bounds = {
        dict(labels)["le"]
        for name, labels in samples
        if name == "keel_request_duration_seconds_bucket"
    }
    assert bounds == {"2.0", "7.0", "+Inf"}


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_records_written_match_the_database(
    tmp_path: Path,
    fake_openai: FakeOpenAI,
    fake_openai_url: str,
    database: str,
    request: pytest.FixtureRequest,
) -> None:
    extra: dict[str, Any] = {}
    if database == "postgresql":
        extra["database_url"] = request.getfixturevalue("postgres_url")
    settings = remote_settings(tmp_path, [_deployment("solo", fake_openai_url)], **extra)
    async with running_app(settings) as (app, client):
        body = {"model": "solo", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(4):
            assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
        rows = await flushed_records(app)
        samples = _samples((await client.get("/metrics")).text)
    assert len(rows) == 4
    assert _value(samples, "keel_records_written_total", writer="requests") == 4
    assert _value(samples, "keel_records_dropped_total", writer="requests") == 0
    assert _value(samples, "keel_record_write_failures_total", writer="requests") == 0


# -- SDK and CLI, against a real server ----------------------------------------------------------


@pytest.fixture
def served(keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str) -> Iterator[str]:
    settings = remote_settings(keel_home, [_deployment("solo", fake_openai_url)])
    with serve_on_loopback(create_app(settings), lifespan="on") as url:
        body = {"model": "solo", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(2):
            assert httpx.post(f"{url}/v1/chat/completions", json=body).status_code == 200
        yield url


def test_sdk_parses_the_families(served: str) -> None:
    with Keel(served) as client:
        families = {family.name: family for family in client.metrics()}
        only_cache = client.metrics(prefix="keel_cache")
        assert client.metrics.text(openmetrics=True).endswith("# EOF\n")
    requests = families["keel_requests"]
    assert requests.type == "counter"
    assert sum(s.value for s in requests.samples if s.name == "keel_requests_total") == 2
    assert families["keel_build_info"].samples[0].labels["version"]
    assert only_cache and all(family.name.startswith("keel_cache") for family in only_cache)


def test_sdk_raises_the_servers_error(keel_home: Path, fake_openai_url: str) -> None:
    settings = remote_settings(
        keel_home, [_deployment("solo", fake_openai_url)], auth={"admin_key": ADMIN_KEY}
    )
    with (
        serve_on_loopback(create_app(settings), lifespan="on") as url,
        Keel(url) as client,
        pytest.raises(KeelAPIError) as raised,
    ):
        client.metrics()
    assert raised.value.status_code == 401


def test_cli_prints_a_table(served: str) -> None:
    env = {"KEEL_URL": served, "COLUMNS": "200"}
    result = CliRunner().invoke(cli, ["metrics", "--filter", "requests_total"], env=env)
    assert result.exit_code == 0, result.output
    assert "keel_requests_total" in result.output
    assert "model=solo" in result.output
    assert "keel_cache" not in result.output

    result = CliRunner().invoke(cli, ["metrics", "--filter", "request_duration", "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert '"keel_request_duration_seconds_count"' in result.output
    assert "_bucket" not in result.output

    result = CliRunner().invoke(cli, ["metrics", "--filter", "no_such_metric"], env=env)
    assert result.exit_code == 1
    assert "--filter" in result.output


async def test_in_flight_counts_a_call_until_it_ends(
    tmp_path: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    settings = remote_settings(tmp_path, [_deployment("solo", fake_openai_url)])
    fake_openai.delays["up-solo"] = 1.0
    async with running_app(settings) as (_app, client):
        body = {"model": "solo", "messages": [{"role": "user", "content": "hi"}]}
        pending = asyncio.create_task(client.post("/v1/chat/completions", json=body))
        # Until the fake holds the request: the state is read at scrape time.
        while fake_openai.count("up-solo") == 0:
            await asyncio.sleep(0.01)
        during = _samples((await client.get("/metrics")).text)
        assert (await pending).status_code == 200
        after = _samples((await client.get("/metrics")).text)
    busy = "keel_deployment_in_flight_requests"
    assert _value(during, "keel_requests_in_flight") == 1
    assert _value(during, busy, model="solo", deployment="solo") == 1
    assert _value(after, "keel_requests_in_flight") == 0
    assert _value(after, busy, model="solo", deployment="solo") == 0
