"""The audit log over HTTP, through the SDK and through the CLI."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import delete, update
from typer.testing import CliRunner

from keel.cli.audit_commands import app as audit_cli
from keel.governance.audit import AuditLog
from keel.governance.tables import audit_log
from keel.sdk import Keel, KeelAPIError
from keel.server.errors import install_error_handlers
from keel.server.routes import audit as routes
from keel.store import Database
from tests.conftest import remote_settings, running_app
from tests.fakes.server import serve_on_loopback
from tests.governance.audit_helpers import DANA, execute, write

A = "/v1/keel/audit"


# -- HTTP, SDK and CLI ----------------------------------------------------------------------


def audit_app(database: Database, audit: AuditLog) -> FastAPI:
    """The audit routes on a bare app, with Keel's error handlers."""
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(routes.router)
    app.state.keel = SimpleNamespace(audit=audit)
    return app


@pytest.fixture
def sqlite_database(tmp_path: Path) -> Iterator[Database]:
    found = Database(f"sqlite:///{tmp_path / 'keel.db'}")
    found.migrate()
    yield found
    found.dispose()


@pytest.fixture
async def api(sqlite_database: Database) -> AsyncIterator[tuple[httpx.AsyncClient, AuditLog]]:
    audit = AuditLog(sqlite_database, flush_interval_s=0.01)
    await audit.start()
    transport = httpx.ASGITransport(app=audit_app(sqlite_database, audit))
    async with httpx.AsyncClient(transport=transport, base_url="http://keel") as client:
        yield client, audit
    await audit.stop()


async def test_list_route(api: tuple[httpx.AsyncClient, AuditLog]) -> None:
    client, audit = api
    await write(audit, 3, action="key.create")
    body = (await client.get(A)).json()
    assert body["object"] == "list"
    assert [entry["seq"] for entry in body["data"]] == [1, 2, 3]
    assert body["next_after_seq"] is None
    first = body["data"][0]
    assert first["after"] == {"limits": {"rpm": 1}} and first["at"].endswith("+00:00")

    page = (await client.get(A, params={"limit": 2})).json()
    assert page["next_after_seq"] == 2
    rest = (await client.get(A, params={"limit": 2, "after_seq": 2})).json()
    assert [entry["seq"] for entry in rest["data"]] == [3]
    assert rest["next_after_seq"] is None

    filtered = await client.get(
        A, params={"action": "key.*", "actor": "dana", "since": "2000-01-01T00:00:00Z"}
    )
    assert len(filtered.json()["data"]) == 3
    assert (await client.get(A, params={"until": "2000-01-01"})).json()["data"] == []


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-01"}, "until"),
        ({"since": "0001-01-01T00:00:00+05:00"}, "since"),
        ({"since": "9" * 100}, "since"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"after_seq": "-1"}, "after_seq"),
        ({"after_seq": str(10**30)}, "after_seq"),
        ({"actor": "a" * 256}, "actor"),
        ({"action": "a" * 256}, "action"),
    ],
)
async def test_bad_filters_are_400(
    api: tuple[httpx.AsyncClient, AuditLog], params: dict[str, str], param: str
) -> None:
    client, _ = api
    response = await client.get(A, params=params)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    if param != "limit":  # export takes no limit
        assert (await client.get(f"{A}/export", params=params)).status_code == 400


async def test_odd_filters_match_nothing(api: tuple[httpx.AsyncClient, AuditLog]) -> None:
    client, audit = api
    await write(audit, 1)
    for value in ("' OR 1=1 --", "x\x00y", "%", "_", "😀"):
        for name in ("actor", "action"):
            response = await client.get(A, params={name: value})
            assert response.status_code == 200, (name, value, response.text)
            assert response.json()["data"] == []


async def test_export_route_streams_ndjson(api: tuple[httpx.AsyncClient, AuditLog]) -> None:
    client, audit = api
    await write(audit, 4)
    response = await client.get(f"{A}/export", params={"after_seq": 1})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = response.text.splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [2, 3, 4]
    await audit.flush()
    exported = audit.query(action="audit.export")
    assert len(exported) == 1 and exported[0]["actor"] == "local"
    assert exported[0]["detail"]["filters"]["after_seq"] == 1


async def test_verify_route(
    api: tuple[httpx.AsyncClient, AuditLog], sqlite_database: Database
) -> None:
    client, audit = api
    await write(audit, 4)
    intact = (await client.post(f"{A}/verify")).json()
    assert intact["ok"] is True and intact["checked"] == 4
    assert intact["first_broken_seq"] is None and intact["reason"] is None
    await audit.flush()  # the verification itself is audited (seq 5)
    assert audit.query(action="audit.verify")[0]["detail"]["ok"] is True
    execute(sqlite_database, update(audit_log).where(audit_log.c.seq == 2).values(target="x"))
    broken = (await client.post(f"{A}/verify")).json()
    assert (broken["ok"], broken["first_broken_seq"]) == (False, 2)
    assert broken["reason"] == "hash mismatch: the entry was modified"


async def test_the_full_app_serves_the_audit_routes(keel_home: Path) -> None:
    async with running_app(remote_settings(keel_home, [])) as (app, client):
        audit: AuditLog = app.state.keel.audit
        audit.record("test.event", actor=DANA, target="x")
        await audit.flush()
        body = (await client.get(A, params={"action": "test.event"})).json()
        assert [entry["target"] for entry in body["data"]] == ["x"]
        assert (await client.post(f"{A}/verify")).json()["ok"] is True
        exported = await client.get(f"{A}/export", params={"action": "test.event"})
        assert len(exported.text.splitlines()) == 1


def seed(database: Database, count: int) -> None:
    async def run() -> None:
        audit = AuditLog(database, flush_interval_s=0.01)
        await audit.start()
        await write(audit, count, action="key.create", target="ключ")
        await audit.stop()

    asyncio.run(run())


@pytest.fixture
def served(sqlite_database: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    # Never started: entries the routes record stay queued, and the tests read what they seeded.
    audit = AuditLog(sqlite_database)
    with serve_on_loopback(audit_app(sqlite_database, audit)) as url:
        monkeypatch.setenv("KEEL_URL", url)
        yield url


def test_the_sdk(served: str, sqlite_database: Database, tmp_path: Path) -> None:
    seed(sqlite_database, 5)
    with Keel(served) as client:
        entries = client.audit.list(action="key.*", since=datetime(2000, 1, 1, tzinfo=UTC))
        assert [entry["seq"] for entry in entries] == [1, 2, 3, 4, 5]
        assert client.audit.page(limit=2)["next_after_seq"] == 2
        assert client.audit.verify()["ok"] is True

        out = tmp_path / "audit.jsonl"
        assert client.audit.export(out, after_seq=2) == 3
        lines = out.read_text(encoding="utf-8").splitlines()
        assert [json.loads(line)["seq"] for line in lines] == [3, 4, 5]
        assert "ключ" in lines[0]
        assert not (tmp_path / "audit.jsonl.partial").exists()

        with pytest.raises(KeelAPIError) as refused:
            client.audit.list(since="not a time")
        assert (refused.value.status_code, refused.value.param) == (400, "since")
        with pytest.raises(KeelAPIError):
            client.audit.export(tmp_path / "bad.jsonl", until="nope")
        assert not (tmp_path / "bad.jsonl").exists()

    # Without the raw connection, export pages through the list route.
    from keel.sdk.audit import AuditAPI

    with Keel(served) as client:
        paged = AuditAPI(client._request)
        monkey_file = tmp_path / "paged.jsonl"
        with monkey_file.open("w", encoding="utf-8") as file:
            assert paged.export(file) == 5


def invoke(*args: str) -> Any:
    return CliRunner().invoke(audit_cli, list(args), catch_exceptions=False)


def test_the_cli(served: str, sqlite_database: Database, tmp_path: Path) -> None:
    seed(sqlite_database, 3)
    listed = invoke("list")
    assert listed.exit_code == 0 and "key.create" in listed.output and "dana" in listed.output
    as_json = json.loads(invoke("list", "--json", "--limit", "2").output)
    assert [entry["seq"] for entry in as_json] == [1, 2]
    assert "--after-seq 2" in invoke("list", "--limit", "2").output
    bad = CliRunner().invoke(audit_cli, ["list", "--since", "soon"])
    assert bad.exit_code == 1 and "since" in bad.output

    out = tmp_path / "out.jsonl"
    exported = invoke("export", "--out", str(out), "--actor", "dana")
    assert exported.exit_code == 0 and "wrote 3 entries" in exported.output
    assert len(out.read_text(encoding="utf-8").splitlines()) == 3

    intact = invoke("verify")
    assert intact.exit_code == 0 and "chain intact: 3 entries" in intact.output
    execute(sqlite_database, delete(audit_log).where(audit_log.c.seq == 2))
    broken = invoke("verify")
    assert broken.exit_code == 1
    assert "broken at entry 3: prev_hash does not match entry 1" in broken.output


def test_the_cli_without_a_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEL_URL", "http://127.0.0.1:9")
    result = CliRunner().invoke(audit_cli, ["verify"])
    assert result.exit_code == 1 and "keel serve" in result.output
