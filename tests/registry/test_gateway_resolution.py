"""The registry drives the gateway: `name`, `name@alias` and `name@3` route to the bound model,
and the card's constraints are enforced before any provider is called."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from keel.config import Settings
from keel.identity import Actor
from keel.registry.cards import parse_card
from keel.registry.models import EntityRef
from tests.conftest import flushed_records, running_app
from tests.fakes.openai import FakeOpenAI

ALICE = Actor("alice", frozenset({"developer"}))
BOB = Actor("bob", frozenset({"maintainer"}))


def card(**overrides: Any) -> Any:
    return parse_card(
        {
            "name": "curie",
            "type": "Generative",
            "description": "The help-center assistant model",
            "gateway_model": "gpt",
            "constraints": ["Max sequence length 50 tokens", "No audio or image inputs"],
            **overrides,
        }
    )


@pytest.fixture
async def keel(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    settings = Settings.model_validate(
        {
            "home": str(keel_home),
            "local_models": {"chat": False, "embeddings": False},
            "models": [{"id": "gpt", "provider": "openai", "api_base": fake_openai_url}],
        }
    )
    async with running_app(settings) as (app, client):
        keel = app.state.keel
        keel.registry.create(card(), ALICE)
        await keel.registry_view.refresh()
        yield app, client


def ask(model: str, content: Any = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


async def test_registry_references_route_to_the_bound_model(
    keel: tuple[FastAPI, httpx.AsyncClient], fake_openai: FakeOpenAI
) -> None:
    app, client = keel
    for reference in ("curie", "curie@1"):
        response = await client.post("/v1/chat/completions", json=ask(reference))
        assert response.status_code == 200, response.text
        assert response.headers["x-keel-registry-version"] == "curie@1"
        assert response.headers["x-keel-deployment"] == "gpt"
    records = await flushed_records(app)
    assert {r["model_requested"] for r in records} == {"curie", "curie@1"}


@pytest.mark.parametrize(
    ("reference", "fragment"),
    [("curie@champion", "no alias 'champion'"), ("curie@9", "no version 9"), ("nope", "nope")],
)
async def test_unknown_references_are_404s(
    keel: tuple[FastAPI, httpx.AsyncClient], reference: str, fragment: str
) -> None:
    _, client = keel
    response = await client.post("/v1/chat/completions", json=ask(reference))
    assert response.status_code == 404
    assert fragment in response.json()["error"]["message"]


async def test_the_cards_constraints_are_enforced_before_the_provider(
    keel: tuple[FastAPI, httpx.AsyncClient], fake_openai: FakeOpenAI
) -> None:
    _, client = keel
    too_long = await client.post("/v1/chat/completions", json=ask("curie", "word " * 200))
    assert too_long.status_code == 413
    assert too_long.json()["error"]["code"] == "max_input_tokens_exceeded"
    assert "curie@1" in too_long.json()["error"]["message"]
    image = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    refused = await client.post("/v1/chat/completions", json=ask("curie", image))
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "modality_not_allowed"
    # The gateway model itself has no such card: the same request passes when asked directly.
    direct = await client.post("/v1/chat/completions", json=ask("gpt", "word " * 200))
    assert direct.status_code == 200
    assert len(fake_openai.requests) == 1


async def test_aliases_and_stages_follow_promotions(
    keel: tuple[FastAPI, httpx.AsyncClient], fake_openai: FakeOpenAI
) -> None:
    app, client = keel
    registry = app.state.keel.registry
    registry.add_version("curie", card(description="second"), ALICE)
    promotion = registry.request_promotion("curie", 2, "staging", ALICE)
    registry.approve(promotion.id, BOB)
    registry.move_alias("curie", "champion", 1, ALICE, reason="A/B baseline")
    await app.state.keel.registry_view.refresh()

    async def served(reference: str) -> str:
        response = await client.post("/v1/chat/completions", json=ask(reference))
        assert response.status_code == 200, response.text
        return str(response.headers["x-keel-registry-version"])

    assert await served("curie@staging") == "curie@2"
    assert await served("curie@champion") == "curie@1"
    assert await served("curie") == "curie@2"  # no production alias yet: the latest version
    tree = registry.lineage(EntityRef("group", "gpt"), direction="upstream")
    assert {child.entity.id for child in tree.upstream} == {"curie@1", "curie@2"}

    registry.archive("curie", ALICE)
    await app.state.keel.registry_view.refresh()
    gone = await client.post("/v1/chat/completions", json=ask("curie"))
    assert gone.status_code == 404 and "archived" in gone.json()["error"]["message"]


async def test_constraints_are_enforced_on_the_local_model(keel_home: Path) -> None:
    settings = Settings.model_validate(
        {"home": str(keel_home), "local_models": {"chat": True, "embeddings": False}}
    )
    async with running_app(settings) as (app, client):
        keel = app.state.keel
        keel.registry.create(card(name="tiny", gateway_model="smollm2-135m-instruct"), ALICE)
        await keel.registry_view.refresh()
        ok = await client.post("/v1/chat/completions", json=ask("tiny", max_tokens=3))
        assert ok.status_code == 200
        assert ok.json()["choices"][0]["message"]["content"] is not None
        too_long = await client.post("/v1/chat/completions", json=ask("tiny", "word " * 200))
        assert too_long.status_code == 413


async def test_cards_must_bind_to_a_served_model_and_rollbacks_cite_the_approval(
    keel: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, client = keel
    headers = {"x-keel-actor": "alice", "x-keel-roles": "developer"}
    unbound = await client.post(
        "/v1/keel/registry/models",
        json={"name": "ghost", "gateway_model": "not-served"},
        headers=headers,
    )
    assert unbound.status_code == 400
    assert unbound.json()["error"]["param"] == "gateway_model"

    registry = app.state.keel.registry
    first = registry.request_promotion("curie", 1, "staging", ALICE)
    registry.approve(first.id, BOB)
    registry.add_version("curie", card(description="second"), ALICE)
    second = registry.request_promotion("curie", 2, "staging", ALICE)
    registry.approve(second.id, BOB)
    path = "/v1/keel/registry/models/curie/aliases/staging"
    without = await client.put(path, json={"version": 1, "reason": "rollback"}, headers=headers)
    assert without.status_code == 409
    rolled_back = await client.put(
        path,
        json={"version": 1, "reason": "rollback", "approval_id": first.id},
        headers=headers,
    )
    assert rolled_back.status_code == 200, rolled_back.text
    await app.state.keel.registry_view.settle()
    response = await client.post("/v1/chat/completions", json=ask("curie@staging"))
    assert response.headers["x-keel-registry-version"] == "curie@1"
