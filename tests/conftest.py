"""Shared fixtures. Every test gets its own KEEL_HOME and a clean KEEL_* environment."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from keel.config import Settings
from keel.server import create_app
from tests.fakes.openai import FakeOpenAI
from tests.fakes.server import serve_on_loopback

# Read at import: the autouse keel_home fixture clears KEEL_* variables before each test.
REDIS_URL = os.environ.get("KEEL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_ADMIN_URL = os.environ.get(
    "KEEL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(autouse=True)
def keel_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("KEEL_") and name != "KEEL_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)
    home = tmp_path / "keel-home"
    monkeypatch.setenv("KEEL_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def served_openai() -> Iterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI()
    with serve_on_loopback(fake.app()) as url:
        yield fake, url


@pytest.fixture
def fake_openai(served_openai: tuple[FakeOpenAI, str]) -> FakeOpenAI:
    fake, _ = served_openai
    fake.reset()
    return fake


@pytest.fixture
def fake_openai_url(served_openai: tuple[FakeOpenAI, str]) -> str:
    return served_openai[1] + "/v1"


def remote_settings(home: Path, models: list[dict[str, Any]], **extra: Any) -> Settings:
    """Settings with the bundled local models off, serving `models` only."""
    return Settings.model_validate(
        {
            "home": str(home),
            "local_models": {"chat": False, "embeddings": False},
            "models": models,
            **extra,
        }
    )


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app with its lifespan running, and an in-process client for it."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        # A loopback name: in open mode Keel answers no other Host.
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            yield app, client


async def flushed_records(app: FastAPI) -> list[dict[str, Any]]:
    keel = app.state.keel
    await keel.recorder.flush()
    rows: list[dict[str, Any]] = keel.database.recent_records(limit=1000)
    return rows


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    name = f"keel_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_ADMIN_URL).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix of this test's own in the shared Redis, emptied afterwards."""
    import redis.asyncio as redis

    prefix = f"keel-test:{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
