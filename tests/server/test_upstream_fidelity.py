"""What an OpenAI client sees through Keel is what it would see calling the upstream: errors
the caller caused keep the upstream's status, type, code, param and message; the upstream's
request id and rate-limit headers are relayed; the client's OpenAI headers are forwarded. And
nothing the operator configured as a header ever comes back out."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from keel.config import DeploymentConfig
from keel.config_loading import load_settings
from tests.conftest import flushed_records, remote_settings, running_app
from tests.fakes.openai import ErrorReply, FakeOpenAI, StreamError
from tests.routing.test_resilience import chat, keel_with, priority_group


def one_model(home: Path, url: str, **deployment: Any) -> Any:
    return (
        remote_settings(
            home,
            [{"id": "gpt", "provider": "openai", "api_base": url, "api_key": "sk-test-key-0123"}],
        )
        if not deployment
        else remote_settings(
            home,
            [
                {
                    "id": "gpt",
                    "provider": "openai",
                    "api_base": url,
                    "api_key": "sk-test-key-0123",
                    **deployment,
                }
            ],
        )
    )


@pytest.mark.parametrize(
    "reply",
    [
        ErrorReply(
            400,
            "Invalid value for 'temperature': expected a number between 0 and 2.",
            code="invalid_value",
            param="temperature",
        ),
        ErrorReply(
            400,
            "This model's maximum context length is 8192 tokens. However, you requested 9000.",
            code="context_length_exceeded",
            param="messages",
        ),
        ErrorReply(
            404,
            "The model `gpt-9` does not exist or you do not have access to it.",
            code="model_not_found",
        ),
        ErrorReply(422, "Unprocessable: tool schema", code="invalid_schema", param="tools"),
    ],
)
async def test_an_error_the_caller_caused_reaches_it_as_the_upstream_said_it(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str, reply: ErrorReply
) -> None:
    fake_openai.then(reply)
    async with running_app(one_model(keel_home, fake_openai_url)) as (app, client):
        response = await client.post("/v1/chat/completions", json=chat("gpt"))
        records = await flushed_records(app)
    assert response.status_code == reply.status
    assert response.json() == {
        "error": {
            "message": reply.message,
            "type": reply.type,
            "param": reply.param,
            "code": reply.code,
        }
    }
    # Which deployment said it is Keel's to tell, in Keel's headers.
    assert response.headers["x-keel-deployment"] == "gpt"
    assert response.headers["x-request-id"] == "req_fake_upstream"
    [record] = records
    assert (record["status_code"], record["deployment"]) == (reply.status, "gpt")


async def test_the_openai_sdk_gets_the_same_typed_error_through_keel_as_direct(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    reply = ErrorReply(400, "Invalid 'temperature'", code="invalid_value", param="temperature")
    fake_openai.then(reply, reply)
    direct = openai.AsyncOpenAI(base_url=fake_openai_url, api_key="sk-x", max_retries=0)
    async with running_app(one_model(keel_home, fake_openai_url)) as (app, _client):
        through = openai.AsyncOpenAI(
            base_url="http://127.0.0.1/v1",
            api_key="local",
            max_retries=0,
            http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=app)),
        )
        raised = []
        for sdk in (direct, through):
            with pytest.raises(openai.BadRequestError) as caught:
                await sdk.chat.completions.create(
                    model="gpt", messages=[{"role": "user", "content": "hi"}]
                )
            raised.append(caught.value)
            await sdk.close()
    direct_error, keel_error = raised
    assert keel_error.body == direct_error.body
    assert (keel_error.code, keel_error.param, keel_error.type) == (
        "invalid_value",
        "temperature",
        "invalid_request_error",
    )
    assert keel_error.request_id == direct_error.request_id == "req_fake_upstream"


@pytest.mark.parametrize("stream", [False, True])
async def test_the_upstream_request_id_and_rate_limits_are_relayed(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str, stream: bool
) -> None:
    async with running_app(one_model(keel_home, fake_openai_url)) as (app, _client):
        sdk = openai.AsyncOpenAI(
            base_url="http://127.0.0.1/v1",
            api_key="local",
            http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=app)),
        )
        raw = await sdk.chat.completions.with_raw_response.create(
            model="gpt", messages=[{"role": "user", "content": "hi"}], stream=stream
        )
        await sdk.close()
    assert raw.request_id == "req_fake_upstream"
    assert raw.headers["x-ratelimit-remaining-requests"] == "9999"
    assert raw.headers["x-ratelimit-limit-requests"] == "10000"
    assert raw.headers["x-keel-request-id"].startswith("req_")


async def test_rate_limit_headers_are_not_relayed_for_a_group_of_several_deployments(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    # Which deployment's limits would they be? Only the request id is one upstream's fact.
    async with keel_with(keel_home, [priority_group("chat", fake_openai_url, "a", "b")]) as (
        _app,
        client,
    ):
        response = await client.post("/v1/chat/completions", json=chat())
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "req_fake_upstream"
    assert not [name for name in response.headers if name.startswith("x-ratelimit-")]


async def test_the_clients_openai_headers_are_forwarded_to_openai_deployments(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    headers = {
        "OpenAI-Organization": "org-client",
        "OpenAI-Project": "proj_client",
        "Idempotency-Key": "idem-123",
        "X-Something-Else": "not forwarded",
    }
    async with running_app(one_model(keel_home, fake_openai_url)) as (_app, client):
        response = await client.post("/v1/chat/completions", json=chat("gpt"), headers=headers)
    assert response.status_code == 200
    sent = fake_openai.last.headers
    assert sent["openai-organization"] == "org-client"
    assert sent["openai-project"] == "proj_client"
    assert sent["idempotency-key"] == "idem-123"
    assert "x-something-else" not in sent
    assert sent["authorization"] == "Bearer sk-test-key-0123"  # Keel's key, never the client's


async def test_forwarded_headers_are_configurable_and_the_operators_config_wins(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    settings = one_model(
        keel_home,
        fake_openai_url,
        organization="org-configured",
        forward_headers=["OpenAI-Organization", "X-Trace-Tag"],
    )
    async with running_app(settings) as (_app, client):
        response = await client.post(
            "/v1/chat/completions",
            json=chat("gpt"),
            headers={
                "OpenAI-Organization": "org-client",
                "X-Trace-Tag": "blue",
                "Idempotency-Key": "idem-1",
            },
        )
    assert response.status_code == 200
    sent = fake_openai.last.headers
    assert sent["openai-organization"] == "org-configured"
    assert sent["x-trace-tag"] == "blue"
    assert "idempotency-key" not in sent  # the list replaces the default


@pytest.mark.parametrize("name", ["Authorization", "x-api-key", "Cookie", "Host", "x-keel-actor"])
def test_credentials_and_connection_headers_can_never_be_forwarded(name: str) -> None:
    with pytest.raises(ValueError, match="never forwarded"):
        DeploymentConfig(id="m", provider="openai", forward_headers=[name])


# -- secrets in configured headers ---------------------------------------------------------------

CUSTOM_SECRET = "custom-auth-7f3a9c1e5b"
PLAIN_HEADER_SECRET = "tenant-token-91d2e8"


def _settings_with_custom_auth(home: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("KEEL_TEST_CUSTOM_AUTH", CUSTOM_SECRET)
    config = home.parent / "keel.yaml"
    config.write_text(
        f"""
home: {home}
local_models: {{chat: false, embeddings: false}}
models:
  - id: gpt
    provider: openai
    api_base: {url}
    headers:
      X-Custom-Auth: "${{KEEL_TEST_CUSTOM_AUTH}}"
      X-Tenant: {PLAIN_HEADER_SECRET}
"""
    )
    return load_settings(config)


@pytest.mark.parametrize(
    "reply",
    [
        ErrorReply(400, f"header X-Custom-Auth={CUSTOM_SECRET} is not allowed"),
        ErrorReply(401, f"bad credentials {CUSTOM_SECRET} / {PLAIN_HEADER_SECRET}"),
        ErrorReply(500, f"upstream crashed reading {PLAIN_HEADER_SECRET}", type="server_error"),
        StreamError(after_chunks=1, message=f"tenant {PLAIN_HEADER_SECRET} over its limit"),
    ],
)
async def test_a_configured_header_echoed_by_the_upstream_never_comes_back_out(
    keel_home: Path,
    fake_openai: FakeOpenAI,
    fake_openai_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    reply: Any,
) -> None:
    fake_openai.then(reply, reply, reply)
    stream = isinstance(reply, StreamError)
    settings = _settings_with_custom_auth(keel_home, fake_openai_url, monkeypatch)
    caplog.set_level(logging.DEBUG)
    async with running_app(settings) as (app, client):
        response = await client.post("/v1/chat/completions", json=chat("gpt", stream=stream))
        listed = await client.get("/v1/keel/requests")
        records = await flushed_records(app)
    assert fake_openai.requests[0].headers["x-custom-auth"] == CUSTOM_SECRET
    seen = [response.text, listed.text, repr(records), caplog.text]
    for text in seen:
        assert CUSTOM_SECRET not in text
        assert PLAIN_HEADER_SECRET not in text
    assert "[redacted]" in response.text
    assert any(record["error_message"] for record in records)
