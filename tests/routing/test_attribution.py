"""Who caused an error decides what it does: a caller's bad request or a failure of Keel's own
code never touches a deployment's health, retries or circuit; an upstream's rate limit is
back-pressure, not failure; only the upstream's own failures count against it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

import httpx
import openai
import pytest

from keel.config import CircuitPolicy, DeploymentConfig, RetryPolicy
from keel.errors import InternalError, InvalidRequestError, KeelError
from keel.providers import Provider
from keel.routing import AttemptTrace, Deployment, ModelGroup
from keel.routing.executor import execute
from keel.routing.health import DeploymentHealth
from tests.conftest import flushed_records
from tests.fakes.openai import ErrorReply, FakeOpenAI
from tests.routing.test_resilience import (
    FAST_RETRY,
    chat,
    deployment_states,
    keel_with,
    priority_group,
    upstream,
)

# One failure opens the circuit: any misattributed error would show at once.
TOUCHY = {"retry": FAST_RETRY, "circuit": {"failure_threshold": 1, "cooldown_s": 60}}
HUGE = 10**30

STRANGE_BODIES: list[dict[str, Any]] = [
    chat(max_tokens=HUGE),
    chat(max_tokens=-HUGE),
    chat(temperature=HUGE),
    chat(seed=HUGE),
    chat(some_extension=HUGE),
    chat(some_extension={"deep": [1, 2, {"deeper": -HUGE}]}),
    chat(logit_bias={"50256": HUGE}),
    chat(
        tools=[
            {
                "type": "function",
                "function": {"name": "f", "parameters": {"type": "object", "maximum": HUGE}},
            }
        ]
    ),
    chat(
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "s", "schema": {"type": "integer", "minimum": HUGE}},
        }
    ),
    chat(messages=[{"role": "user", "content": "\ud800 a lone surrogate"}]),
    chat(messages=[{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]),
]


def _raw(body: dict[str, Any]) -> bytes:
    # The standard library writes integers of any size and lone surrogates as escapes, as a
    # careless or hostile client would.
    import json

    return json.dumps(body).encode()


@pytest.mark.parametrize("stream", [False, True])
async def test_no_request_body_can_change_a_deployments_health(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str, stream: bool
) -> None:
    async with keel_with(keel_home, [priority_group("chat", fake_openai_url, "a")], TOUCHY) as (
        app,
        client,
    ):
        for body in STRANGE_BODIES * 3:
            response = await client.post(
                "/v1/chat/completions",
                content=_raw({**body, "stream": stream}),
                headers={"content-type": "application/json"},
            )
            assert response.status_code == 400, (body, response.text)
            error = response.json()["error"]
            assert error["type"] == "invalid_request_error"
        # Nothing reached the upstream, and the deployment is as healthy as it was.
        assert fake_openai.count() == 0
        state = (await deployment_states(client))["a"]
        assert (state["state"], state["failures"], state["in_flight"]) == ("closed", 0, 0)
        answered = await client.post("/v1/chat/completions", json=chat())
        assert answered.status_code == 200
        assert answered.headers["x-keel-attempts"] == "1"
        records = await flushed_records(app)
    assert sorted(r["status_code"] for r in records) == [200] + [400] * len(STRANGE_BODIES) * 3
    assert all(r["attempts"] <= 1 for r in records)


# -- the executor, with providers that fail in each way ---------------------------------------


class _Scripted(Provider):
    name: ClassVar[str] = "scripted"


def _deployment(deployment_id: str) -> Deployment:
    config = DeploymentConfig(id=deployment_id, provider="openai", tier=ord(deployment_id))
    provider = _Scripted(config, None)  # type: ignore[arg-type]
    return Deployment(provider, DeploymentHealth(circuit=CircuitPolicy(failure_threshold=1)))


def _group(*deployments: Deployment, **retry: Any) -> ModelGroup:
    return ModelGroup(
        id="g",
        deployments=list(deployments),
        strategy="priority",
        retry=RetryPolicy(backoff_initial_s=0, backoff_max_s=0, **retry),
        circuit=CircuitPolicy(failure_threshold=1),
        fallbacks=[],
    )


def _calls(
    failure: Callable[[], BaseException],
) -> tuple[list[str], Callable[[Provider], Awaitable[str]]]:
    called: list[str] = []

    async def invoke(provider: Provider) -> str:
        called.append(provider.config.id)
        raise failure()

    return called, invoke


def _no_fallbacks(model: str) -> ModelGroup:
    raise AssertionError(f"no fallback expected, got {model}")


@pytest.mark.parametrize(
    "failure",
    [
        lambda: TypeError("Object of type int is not JSON serializable"),
        lambda: KeyError("content"),
        lambda: ValueError("template error: content is None"),
    ],
)
async def test_an_exception_in_keels_own_code_is_a_500_never_a_health_event(
    failure: Callable[[], BaseException],
) -> None:
    a, b = _deployment("a"), _deployment("b")
    called, invoke = _calls(failure)
    with pytest.raises(InternalError) as raised:
        await execute(_group(a, b), invoke, _no_fallbacks, AttemptTrace())
    assert raised.value.status_code == 500 and raised.value.code == "internal_error"
    assert called == ["a"]  # not retried, not failed over: it would fail the same way anywhere
    for deployment in (a, b):
        health = deployment.health
        assert (health.state, health.failures_total, health.in_flight) == ("closed", 0, 0)


async def test_a_callers_error_raised_in_the_adapter_is_released_not_counted() -> None:
    a = _deployment("a")
    called, invoke = _calls(lambda: InvalidRequestError("bad", param="messages"))
    for _ in range(3):
        with pytest.raises(InvalidRequestError):
            await execute(_group(a), invoke, _no_fallbacks, AttemptTrace())
    assert called == ["a", "a", "a"]
    assert (a.health.state, a.health.failures_total, a.health.in_flight) == ("closed", 0, 0)


async def test_a_half_open_probe_that_meets_a_callers_error_frees_the_probe() -> None:
    a = _deployment("a")
    a.health.state = "half_open"
    _, invoke = _calls(lambda: InvalidRequestError("bad"))
    with pytest.raises(InvalidRequestError):
        await execute(_group(a), invoke, _no_fallbacks, AttemptTrace())
    assert a.health.state == "half_open" and not a.health.probe_in_flight
    assert a.health.available()  # the next request may probe


# -- 429: back-pressure, not failure -----------------------------------------------------------


async def test_a_rate_limited_deployment_answers_429_with_retry_after_and_its_circuit_stays(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    fake_openai.faults[upstream("a")] = ErrorReply(
        429,
        "Rate limit reached for requests",
        type="requests",
        code="rate_limit_exceeded",
        retry_after="30",
    )
    async with keel_with(keel_home, [priority_group("chat", fake_openai_url, "a")], TOUCHY) as (
        _app,
        client,
    ):
        for _ in range(6):
            response = await client.post("/v1/chat/completions", json=chat())
            assert response.status_code == 429, response.text
            assert 1 <= int(response.headers["retry-after"]) <= 30
            assert response.json()["error"]["type"] in ("requests", "rate_limit_error")
        # One upstream call: the others knew to keep away for the Retry-After.
        assert fake_openai.count() == 1
        first_error = fake_openai.requests[0]
        assert first_error.body["model"] == upstream("a")
        state = (await deployment_states(client))["a"]
        assert state["state"] == "closed"
        assert state["failures"] == 0
        assert state["cooldown_remaining_s"] > 20


async def test_the_openai_sdk_sees_a_rate_limit_error_not_a_503(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    fake_openai.faults[upstream("a")] = ErrorReply(
        429, "Rate limit reached", type="requests", code="rate_limit_exceeded", retry_after="20"
    )
    async with keel_with(keel_home, [priority_group("chat", fake_openai_url, "a")], TOUCHY) as (
        app,
        _client,
    ):
        sdk = openai.AsyncOpenAI(
            base_url="http://127.0.0.1/v1",
            api_key="local",
            max_retries=0,
            http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=app)),
        )
        for _ in range(3):
            with pytest.raises(openai.RateLimitError) as raised:
                await sdk.chat.completions.create(
                    model="chat", messages=[{"role": "user", "content": "hi"}]
                )
            assert raised.value.code == "rate_limit_exceeded"
            assert raised.value.response.headers["retry-after"]
        await sdk.close()


@pytest.mark.parametrize("round_", range(4))
async def test_a_request_that_waits_out_a_retry_after_always_makes_the_retry(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str, round_: int
) -> None:
    fake_openai.then(
        ErrorReply(429, "slow down", type="rate_limit_error", retry_after="0.05"),
        ErrorReply(429, "slow down", type="rate_limit_error", retry_after="0.05"),
    )
    routing = {**TOUCHY, "retry": {**FAST_RETRY, "max_attempts": 3, "rate_limit_wait_s": 5}}
    async with keel_with(keel_home, [priority_group("chat", fake_openai_url, "a")], routing) as (
        _app,
        client,
    ):
        response = await client.post("/v1/chat/completions", json=chat())
        assert response.status_code == 200, response.text
        assert response.headers["x-keel-attempts"] == "3"
        assert fake_openai.count() == 3


async def test_a_retry_after_longer_than_the_wait_allowed_goes_back_to_the_client_at_once(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    fake_openai.then(ErrorReply(429, "slow down", type="rate_limit_error", retry_after="8"))
    async with keel_with(keel_home, [priority_group("chat", fake_openai_url, "a")]) as (
        _app,
        client,
    ):
        response = await client.post("/v1/chat/completions", json=chat())
        assert response.status_code == 429
        assert response.headers["retry-after"] == "8"
        assert fake_openai.count() == 1


async def test_a_rate_limited_deployment_sends_traffic_to_the_others(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    fake_openai.faults[upstream("a")] = ErrorReply(
        429, "slow down", type="rate_limit_error", retry_after="30"
    )
    async with keel_with(
        keel_home, [priority_group("chat", fake_openai_url, "a", "b")], TOUCHY
    ) as (_app, client):
        responses = await asyncio.gather(
            *(client.post("/v1/chat/completions", json=chat()) for _ in range(5))
        )
        assert all(r.status_code == 200 for r in responses)
        assert {r.headers["x-keel-deployment"] for r in responses} == {"b"}
        states = await deployment_states(client)
        assert states["a"]["state"] == "closed" and states["b"]["state"] == "closed"


def test_keel_errors_keep_their_class_status() -> None:
    # The instance may carry an upstream's status and type; the class keeps its own.
    relayed = InvalidRequestError("x", status_code=422, error_type="invalid_request_error")
    assert relayed.status_code == 422 and InvalidRequestError.status_code == 400
    assert KeelError("y").status_code == 500


async def test_fallbacks_are_followed_transitively_each_group_once(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    # chat → [second, third]; second → [third, last]: the request may end up on any of them,
    # as the PII screening already assumes, and no group is tried twice.
    for failing in ("a", "b", "c"):
        fake_openai.faults[upstream(failing)] = ErrorReply(500, "down", type="server_error")
    single = {**FAST_RETRY, "max_attempts": 1}
    groups = [
        priority_group("chat", fake_openai_url, "a", fallbacks=["second", "third"], retry=single),
        priority_group("second", fake_openai_url, "b", fallbacks=["third", "last"], retry=single),
        priority_group("third", fake_openai_url, "c", retry=single),
        priority_group("last", fake_openai_url, "d", retry=single),
    ]
    async with keel_with(keel_home, groups) as (_app, client):
        response = await client.post("/v1/chat/completions", json=chat())
    assert response.status_code == 200, response.text
    assert response.headers["x-keel-deployment"] == "d"
    assert response.headers["x-keel-attempts"] == "4"
    assert [fake_openai.count(upstream(d)) for d in "abcd"] == [1, 1, 1, 1]
