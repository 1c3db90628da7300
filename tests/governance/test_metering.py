"""What quotas are charged on the paths where the answer is not simply delivered: an answer a
guardrail blocks, a fallback with limits of its own, a stream nobody read, a remote fallback
behind a local model."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from keel.gateway import Call
from keel.identity import Actor
from tests.conftest import flushed_records, remote_settings, running_app
from tests.fakes.openai import ErrorReply, FakeOpenAI, Reply

ADMIN_KEY = "metering-test-admin-key-0123456789abcdef"
ADMIN = Actor("admin-key", frozenset({"admin"}), kind="bootstrap")


def _deployment(model_id: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"id": model_id, "provider": "openai", "api_base": url, "api_key": "sk-up", **extra}


async def _team_key(app: FastAPI, limits: dict[str, Any]) -> tuple[str, dict[str, str]]:
    team = f"t-{uuid.uuid4().hex[:8]}"
    app.state.keel.directory.create_team(team, limits=limits)
    app.state.keel.directory.create_user(team, role="developer", team=team)
    _, secret = app.state.keel.directory.create_key(team, name="k", created_by=ADMIN)
    await app.state.keel.access.refresh()
    return team, {"authorization": f"Bearer {secret}"}


def _chat(model: str, content: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


async def test_an_answer_blocked_by_a_guardrail_is_still_paid(
    tmp_path: Path, fake_openai_url: str
) -> None:
    rules = [{"name": "no-echo", "kind": "deny_list", "terms": ["echo"], "stage": "output"}]
    settings = remote_settings(
        tmp_path,
        [_deployment("priced", fake_openai_url)],
        auth={"admin_key": ADMIN_KEY},
        guardrails={"rules": rules},
        prices={"priced": {"input": 1000, "output": 1000}},
    )
    async with running_app(settings) as (app, client):
        team, key = await _team_key(app, {"tokens_per_day": 10_000, "usd_per_day": 1000})
        blocked = await client.post("/v1/chat/completions", json=_chat("priced"), headers=key)
        assert blocked.status_code == 400
        assert blocked.json()["error"]["code"] == "guardrail_blocked"
        await app.state.keel.gateway.drain()
        usage = (await client.get("/v1/keel/usage", headers=key)).json()["data"]
        spent = {row["metric"]: row["used"] for row in usage if row["scope"] == f"team:{team}"}
        record = next(r for r in await flushed_records(app) if r["team"] == team)
        paid = record["prompt_tokens"] + record["completion_tokens"]
        assert paid > 0 and spent["tokens"] == paid
        assert spent["usd"] > 0


async def test_a_fallback_is_held_to_its_own_model_limits(
    tmp_path: Path, fake_openai_url: str, fake_openai: FakeOpenAI
) -> None:
    groups = [
        {
            "id": "cheap",
            "deployments": [_deployment("cheap-1", fake_openai_url, model="m-cheap")],
            "fallbacks": ["expensive"],
        },
        {
            "id": "expensive",
            "deployments": [_deployment("expensive-1", fake_openai_url, model="m-expensive")],
        },
    ]
    settings = remote_settings(
        tmp_path,
        [],
        groups=groups,
        auth={"admin_key": ADMIN_KEY},
        quotas={"models": {"expensive": {"rpm": 1}}},
        routing={"retry": {"max_attempts": 1}},
    )
    async with running_app(settings) as (app, client):
        _, key = await _team_key(app, {})
        fake_openai.faults["m-cheap"] = ErrorReply(503, "overloaded", type="server_error")
        first = await client.post("/v1/chat/completions", json=_chat("cheap"), headers=key)
        assert first.status_code == 200
        assert first.headers["x-keel-deployment"] == "expensive-1"
        second = await client.post("/v1/chat/completions", json=_chat("cheap"), headers=key)
        assert second.status_code == 429
        assert "model expensive: requests per minute" in second.json()["error"]["message"]
        assert fake_openai.count("m-expensive") == 1


async def test_a_stream_nobody_read_is_finished_and_frees_its_deployment(
    tmp_path: Path, fake_openai_url: str
) -> None:
    settings = remote_settings(tmp_path, [_deployment("streamer", fake_openai_url)])
    async with running_app(settings) as (app, _):
        keel = app.state.keel
        call = Call(endpoint="chat.completions")
        body = json.dumps(_chat("streamer", stream=True)).encode()

        async def read() -> bytes:
            return body

        reply = await keel.gateway.chat_completions(read, call)
        deployment = keel.router.group("streamer").deployments[0]
        assert reply.stream is not None and deployment.health.in_flight == 1
        assert reply.done is not None
        reply.done()  # the client left before the first byte was sent
        assert deployment.health.in_flight == 0
        records = [r for r in await flushed_records(app) if r["id"] == call.request_id]
        assert [r["status_code"] for r in records] == [499]
        reply.done()  # once only
        assert len([r for r in await flushed_records(app) if r["id"] == call.request_id]) == 1


async def test_a_remote_fallback_behind_a_local_model_gets_the_masked_prompt(
    tmp_path: Path, fake_openai_url: str, fake_openai: FakeOpenAI
) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a model")
    groups = [
        {
            "id": "private",
            "deployments": [
                {"id": "private-1", "provider": "llama_cpp", "model_path": str(broken)}
            ],
            "fallbacks": ["cloud"],
        },
        {"id": "cloud", "deployments": [_deployment("cloud-1", fake_openai_url)]},
    ]
    settings = remote_settings(
        tmp_path, [], groups=groups, pii={"outbound": "mask", "local": "allow"}
    )
    async with running_app(settings) as (_, client):
        prompt = "email me at john.smith@example.com"
        response = await client.post("/v1/chat/completions", json=_chat("private", prompt))
        assert response.status_code == 200, response.text
        assert response.headers["x-keel-deployment"] == "cloud-1"
        assert "john.smith@example.com" not in json.dumps(fake_openai.last.body)


def test_the_fallback_chain_is_followed_transitively(tmp_path: Path) -> None:
    from keel.routing import build_router

    def group(name: str, **extra: Any) -> dict[str, Any]:
        return {
            "id": name,
            "deployments": [_deployment(f"{name}-1", "http://127.0.0.1:9")],
            **extra,
        }

    settings = remote_settings(
        tmp_path,
        [],
        groups=[
            group("a", fallbacks=["b"]),
            group("b", context_window_fallback="c"),
            group("c", content_policy_fallback="d"),
            group("d"),
        ],
    )
    router = build_router(settings, None, None)  # type: ignore[arg-type]
    assert [g.id for g in router.chain(router.group("a"))] == ["a", "b", "c", "d"]


async def test_a_token_limit_holds_for_concurrent_answers_without_max_tokens(
    tmp_path: Path, fake_openai_url: str, fake_openai: FakeOpenAI
) -> None:
    """Each call reserves its prompt plus `quotas.default_output_tokens` for the answer, so
    calls in flight together cannot overshoot a tpm limit by answers nobody reserved."""
    # Every answer uses 400 tokens and takes a moment, so the calls overlap.
    upstream = "up-tpm"
    fake_openai.delays[upstream] = 0.3
    usage = {"prompt_tokens": 5, "completion_tokens": 400, "total_tokens": 405}
    fake_openai.then(*(Reply(content="x", usage=usage) for _ in range(6)))
    settings = remote_settings(
        tmp_path,
        [_deployment("tpm-model", fake_openai_url, model=upstream)],
        quotas={"models": {"tpm-model": {"tpm": 1200}}, "default_output_tokens": 500},
    )
    async with running_app(settings) as (app, client):
        responses = await asyncio.gather(
            *(client.post("/v1/chat/completions", json=_chat("tpm-model")) for _ in range(6))
        )
        statuses = sorted(response.status_code for response in responses)
        records = await flushed_records(app)
    # 1200 holds two reservations of about 505 tokens; the others are refused up front.
    assert statuses == [200, 200, 429, 429, 429, 429]
    paid = sum(
        r["prompt_tokens"] + r["completion_tokens"] for r in records if r["status_code"] == 200
    )
    assert paid <= 1200
    assert fake_openai.count(upstream) == 2
