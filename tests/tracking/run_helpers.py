"""Shared pieces of the run-tracking tests: the embedded store on SQLite and PostgreSQL, and
the whole Keel app served on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from keel.config import Settings
from keel.server import create_app
from keel.tracking import runs
from keel.tracking.embedded import EmbeddedTracking
from tests.conftest import remote_settings
from tests.fakes.server import serve_on_loopback

ADMIN_KEY = "keel-test-admin-key-0123456789abcdef"


def database_url(request: pytest.FixtureRequest, home: Path) -> str | None:
    """None (the KEEL_HOME SQLite database) or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url


def settings_for(home: Path, database: str | None, **extra: Any) -> Settings:
    if database is not None:
        extra["database_url"] = database
    return remote_settings(home, [], **extra)


def serve_keel(settings: Settings) -> AbstractContextManager[str]:
    return serve_on_loopback(create_app(settings), lifespan="on")


def embedded(settings: Settings) -> Iterator[EmbeddedTracking]:
    tracking = EmbeddedTracking.from_settings(settings)
    try:
        yield tracking
    finally:
        tracking.close()


def forget_default_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """`keel.start_run` picks its backend once per process; each test picks again."""
    monkeypatch.setattr(runs, "_DEFAULT", [])
