"""Refusals that name nobody are audited without letting an anonymous client grow the log: one
entry at once per source, action and code in a window, one summary entry for the rest."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from keel.governance.audit import AuditLog
from keel.governance.audit_refusals import RefusalTally
from keel.identity import Actor
from keel.server import create_app
from keel.store import Database
from tests.conftest import remote_settings

ADMIN_KEY = "test-bootstrap-admin-key-0123456789"
GUESSED = {"authorization": "Bearer keel_sk_guessedguessedguessedguessed0000"}
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


def _settings(home: Path, database_url: str, window_s: float, **server: Any) -> Any:
    return remote_settings(
        home,
        [],
        database_url=database_url,
        auth={"admin_key": ADMIN_KEY},
        server={"refusal_audit_window_s": window_s, **server},
    )


@asynccontextmanager
async def _serving(settings: Any) -> AsyncIterator[tuple[FastAPI, dict[str, httpx.AsyncClient]]]:
    """The app with a client per source address."""
    app = create_app(settings)
    sources = ("198.51.100.7", "203.0.113.9", "2001:db8:5:6::1", "2001:db8:5:6::2")
    async with app.router.lifespan_context(app):
        clients: dict[str, httpx.AsyncClient] = {}
        for source in sources:
            transport = httpx.ASGITransport(app=app, client=(source, 40000))
            clients[source] = httpx.AsyncClient(transport=transport, base_url="http://keel")
        try:
            yield app, clients
        finally:
            for client in clients.values():
                await client.aclose()


def _refusals(database_url: str) -> tuple[list[dict[str, Any]], bool]:
    """The access.* entries as the database holds them, and whether the chain verifies."""
    database = Database(database_url)
    try:
        log = AuditLog(database)
        entries = log.query(action="access.*", limit=1000)
        return entries, log.verify().ok
    finally:
        database.dispose()


async def test_three_hundred_guesses_from_one_source_are_two_entries(
    tmp_path: Path, database_url: str
) -> None:
    async with _serving(_settings(tmp_path, database_url, window_s=3600)) as (_, clients):
        guesser = clients["198.51.100.7"]
        for index in range(300):
            path = "/v1/models" if index % 2 else "/v1/keel/users"
            response = await guesser.get(path, headers=GUESSED)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_api_key"
        for _ in range(20):  # no credential at all
            assert (await guesser.get("/v1/models")).status_code == 401
        assert (await clients["203.0.113.9"].get("/v1/models", headers=GUESSED)).status_code == 401
        # One IPv6 host holds a whole /64: two addresses in it are one source.
        for source in ("2001:db8:5:6::1", "2001:db8:5:6::2"):
            for _ in range(5):
                assert (await clients[source].get("/v1/models", headers=GUESSED)).status_code == 401
        assert (await guesser.get("/v1/models", headers=ADMIN)).status_code == 200
    # Stopping the server writes the summaries of the windows still open.
    entries, verified = _refusals(database_url)
    assert verified
    assert {entry["action"] for entry in entries} == {"access.unauthenticated"}
    assert all(entry["actor"] == "anonymous" for entry in entries)
    by_source: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for entry in entries:
        by_source.setdefault((entry["source_ip"], entry["detail"]["code"]), []).append(entry)
    counts = {key: [row["detail"]["count"] for row in rows] for key, rows in by_source.items()}
    assert counts == {
        ("198.51.100.7", "invalid_api_key"): [1, 299],
        ("198.51.100.7", "missing_api_key"): [1, 19],
        ("203.0.113.9", "invalid_api_key"): [1],
        ("2001:db8:5:6::1", "invalid_api_key"): [1],
        ("2001:db8:5:6::/64", "invalid_api_key"): [9],
    }
    first, summary = by_source[("198.51.100.7", "invalid_api_key")]
    assert first["target"] == "GET /v1/keel/users"
    assert first["outcome"] == "401" and first["detail"]["reason"]
    assert summary["target"] is None and summary["outcome"] == "401"
    assert summary["detail"]["first_seen"] <= summary["detail"]["last_seen"]
    assert summary["detail"]["window_s"] == 3600
    assert sorted(summary["detail"]["targets"]) == ["GET /v1/keel/users", "GET /v1/models"]
    assert "guessed" not in str(entries)


async def test_a_window_that_ends_while_serving_is_summarized(
    tmp_path: Path, database_url: str
) -> None:
    sent = 40
    async with _serving(_settings(tmp_path, database_url, window_s=0.2)) as (app, clients):
        for _ in range(sent):
            response = await clients["203.0.113.9"].get("/v1/models", headers=GUESSED)
            assert response.status_code == 401
        audit: AuditLog = app.state.keel.audit
        # Every refusal is accounted for once its window has ended, without stopping.
        deadline = time.monotonic() + 30
        total = 0
        while total != sent and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            await audit.flush()
            entries = audit.query(action="access.unauthenticated", limit=1000)
            total = sum(entry["detail"]["count"] for entry in entries)
        assert total == sent
        assert all(entry["source_ip"] == "203.0.113.9" for entry in entries)
    entries, verified = _refusals(database_url)
    assert verified
    assert sum(entry["detail"]["count"] for entry in entries) == sent


async def test_refusals_of_a_named_caller_stay_one_entry_each(
    tmp_path: Path, database_url: str
) -> None:
    async with _serving(_settings(tmp_path, database_url, window_s=3600)) as (app, clients):
        directory = app.state.keel.directory
        directory.create_team("ml")
        directory.create_user("val", role="viewer", team="ml")
        bootstrap = Actor("admin-key", frozenset({"admin"}), kind="bootstrap")
        _, secret = directory.create_key("val", name="k", created_by=bootstrap)
        await app.state.keel.access.refresh()
        viewer = {"authorization": f"Bearer {secret}"}
        for _ in range(3):
            response = await clients["198.51.100.7"].get("/v1/keel/users", headers=viewer)
            assert response.status_code == 403
    entries, verified = _refusals(database_url)
    assert verified
    assert [(entry["action"], entry["actor"]) for entry in entries] == [
        ("access.denied", "val")
    ] * 3


# -- the tally on its own, with a clock the test moves -------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _refuse(tally: RefusalTally, source: str, code: str = "invalid_api_key") -> None:
    tally.add(
        "access.unauthenticated",
        code=code,
        reason="the API key is not valid (unknown or revoked)",
        target="GET /v1/models",
        outcome="401",
        source_ip=source,
    )


async def _written(audit: AuditLog) -> list[tuple[str | None, int, bool]]:
    await audit.flush()
    return [
        (entry["source_ip"], entry["detail"]["count"], bool(entry["detail"].get("many_sources")))
        for entry in audit.query(action="access.unauthenticated", limit=1000)
    ]


async def test_a_window_summarizes_its_refusals_and_the_next_starts_afresh(
    audit: AuditLog,
) -> None:
    clock = Clock()
    tally = RefusalTally(audit.record, window_s=60, max_sources=10, clock=clock)
    for _ in range(4):
        _refuse(tally, "198.51.100.7")
        clock.now += 10
    assert await _written(audit) == [("198.51.100.7", 1, False)]
    assert tally.seconds_to_next_end() == 20
    clock.now += 20  # 60 s after the first refusal
    tally.expire()
    assert await _written(audit) == [("198.51.100.7", 1, False), ("198.51.100.7", 3, False)]
    assert tally.seconds_to_next_end() is None
    _refuse(tally, "198.51.100.7")
    tally.close()
    assert (await _written(audit))[2:] == [("198.51.100.7", 1, False)]
    assert audit.verify().ok


async def test_sources_past_the_cap_are_folded_into_one_entry(audit: AuditLog) -> None:
    clock = Clock()
    tally = RefusalTally(audit.record, window_s=60, max_sources=2, clock=clock)
    for number in range(1, 6):
        for _ in range(2):
            _refuse(tally, f"198.51.100.{number}")
    _refuse(tally, "198.51.100.9", code="missing_api_key")
    tally.close()
    assert await _written(audit) == [
        ("198.51.100.1", 1, False),
        ("198.51.100.2", 1, False),
        ("198.51.100.1", 1, False),
        ("198.51.100.2", 1, False),
        (None, 6, True),
        (None, 1, True),
    ]
    assert audit.verify().ok
