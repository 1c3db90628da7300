"""Shared fixtures for the dataset and prompt tests: a migrated database on SQLite and on
PostgreSQL, and a running Keel server (REST, SDK and CLI all talk to it)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from keel.server.app import create_app
from keel.store import Database
from tests.conftest import remote_settings
from tests.fakes.server import serve_on_loopback


@pytest.fixture(params=["sqlite", "postgresql"])
def library_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'library.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    database = Database(url)
    database.migrate()
    yield database
    database.dispose()


@dataclass(frozen=True)
class LibraryServer:
    url: str
    database_url: str


@pytest.fixture(params=["sqlite", "postgresql"])
def library_server(
    request: pytest.FixtureRequest, tmp_path: Path, fake_openai_url: str
) -> Iterator[LibraryServer]:
    """A Keel server on loopback (open mode) serving one fake OpenAI model, `judge`, and one
    fake embedding model, `embedder`."""
    extra = {}
    if request.param == "postgresql":
        extra["database_url"] = request.getfixturevalue("postgres_url")
    models = [
        {"id": "judge", "provider": "openai", "api_base": fake_openai_url},
        {"id": "embedder", "provider": "openai", "api_base": fake_openai_url, "kind": "embedding"},
    ]
    settings = remote_settings(tmp_path / "home", models, **extra)
    with serve_on_loopback(create_app(settings), lifespan="on") as url:
        yield LibraryServer(url, settings.effective_database_url)
