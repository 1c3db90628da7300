"""What the feedback and quality tests share: a governed server on SQLite or PostgreSQL with
users in two teams, and a way to make real requests through it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from keel.identity import Actor
from tests.conftest import remote_settings, running_app

ADMIN_KEY = "feedback-test-admin-key-0123456789abcdef"
ADMIN = Actor("admin-key", frozenset({"admin"}), kind="bootstrap")
MODEL = "fake-model"
# user: (role, team)
USERS = {
    "ana": ("developer", "ml"),
    "ben": ("developer", "ops"),
    "vic": ("viewer", "ml"),
    "max": ("maintainer", "ops"),
}


@dataclass
class Served:
    app: FastAPI
    client: httpx.AsyncClient
    keys: dict[str, str]

    async def chat(self, user: str = "admin") -> str:
        """One real request through the gateway; its request id."""
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        response = await self.client.post(
            "/v1/chat/completions", json=body, headers=self.bearer(user)
        )
        assert response.status_code == 200, response.text
        return response.headers["x-keel-request-id"]

    def bearer(self, user: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.keys[user]}"}

    async def post(self, user: str, body: dict[str, Any]) -> httpx.Response:
        return await self.client.post("/v1/keel/feedback", json=body, headers=self.bearer(user))

    async def get(self, user: str, path: str, **params: Any) -> httpx.Response:
        return await self.client.get(path, params=params, headers=self.bearer(user))


def database_url_for(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'keel.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@asynccontextmanager
async def governed(
    home: Path, upstream: str, database_url: str, **extra: Any
) -> AsyncIterator[Served]:
    models = [{"id": MODEL, "provider": "openai", "api_base": upstream, "api_key": "sk-up"}]
    settings = remote_settings(
        home, models, database_url=database_url, auth={"admin_key": ADMIN_KEY}, **extra
    )
    async with running_app(settings) as (app, client):
        directory = app.state.keel.directory
        keys = {"admin": ADMIN_KEY}
        for team in ("ml", "ops"):
            directory.create_team(team)
        for user, (role, team) in USERS.items():
            directory.create_user(user, role=role, team=team)
            _, keys[user] = directory.create_key(user, name="k", created_by=ADMIN)
        # An application's key: inference routes only.
        _, keys["ana-app"] = directory.create_key(
            "ana", name="app", created_by=ADMIN, routes=["inference"]
        )
        await app.state.keel.access.refresh()
        yield Served(app, client, keys)
