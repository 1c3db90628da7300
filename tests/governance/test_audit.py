"""The tamper-evident audit log: the writer, the hash chain and its verification (on SQLite and
PostgreSQL), then the HTTP routes, the SDK and the CLI."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import hashlib
import itertools
import json
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from uuid import UUID

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel
from sqlalchemy import delete, select, update
from typer.testing import CliRunner

import keel.governance.audit as audit_module
from keel.cli.audit_commands import app as audit_cli
from keel.governance.audit import AuditLog, redact
from keel.governance.audit_chain import GENESIS_HASH, HASHED_COLUMNS, entry_hash, is_secret_key
from keel.governance.tables import audit_log
from keel.identity import Actor
from keel.sdk import Keel, KeelAPIError
from keel.server.errors import install_error_handlers
from keel.server.routes import audit as routes
from keel.store import Database
from tests.conftest import remote_settings, running_app
from tests.fakes.server import serve_on_loopback

DANA = Actor(
    "dana",
    frozenset({"admin"}),
    kind="user",
    key_id="key_dana",
    team="ml-platform",
    source_ip="10.0.0.7",
)
A = "/v1/keel/audit"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'keel.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    found = Database(database_url)
    found.migrate()
    yield found
    found.dispose()


@pytest.fixture
async def audit(database: Database) -> AsyncIterator[AuditLog]:
    log = AuditLog(database, flush_interval_s=0.01)
    await log.start()
    yield log
    await log.stop()


def rows(database: Database) -> list[dict[str, Any]]:
    with database.engine.connect() as connection:
        query = select(audit_log).order_by(audit_log.c.seq)
        return [dict(row._mapping) for row in connection.execute(query)]


def execute(database: Database, statement: Any) -> None:
    with database.engine.begin() as connection:
        connection.execute(statement)


async def write(audit: AuditLog, count: int, **fields: Any) -> None:
    for index in range(count):
        audit.record(
            fields.get("action", "team.update"),
            actor=fields.get("actor", DANA),
            target=fields.get("target", f"team-{index}"),
            before={"limits": {"rpm": index}},
            after={"limits": {"rpm": index + 1}},
        )
    await audit.flush()


# -- the chain ------------------------------------------------------------------------------


async def test_entries_form_a_hash_chain(audit: AuditLog, database: Database) -> None:
    await write(audit, 5)
    stored = rows(database)
    assert [row["seq"] for row in stored] == [1, 2, 3, 4, 5]
    assert stored[0]["prev_hash"] == GENESIS_HASH == "0" * 64
    for previous, row in itertools.pairwise(stored):
        assert row["prev_hash"] == previous["hash"]
    first = stored[0]
    assert (first["actor"], first["actor_kind"], first["key_id"], first["team"]) == (
        "dana",
        "user",
        "key_dana",
        "ml-platform",
    )
    assert first["source_ip"] == "10.0.0.7"  # from the actor
    assert first["outcome"] == "ok"

    # The documented form, recomputed by hand: every column but seq and hash, sorted keys,
    # no whitespace, UTF-8, `at` as ISO-8601 UTC with microseconds.
    at = first["at"] if first["at"].tzinfo else first["at"].replace(tzinfo=UTC)
    body = {name: first[name] for name in HASHED_COLUMNS}
    body["at"] = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == first["hash"]

    result = audit.verify()
    assert (result.ok, result.checked, result.first_broken_seq, result.reason) == (
        True,
        5,
        None,
        None,
    )
    assert result.head_hash == stored[-1]["hash"]


async def test_an_empty_log_verifies(audit: AuditLog) -> None:
    result = audit.verify()
    assert (result.ok, result.checked, result.head_hash) == (True, 0, None)


class Tier(enum.Enum):
    GOLD = "gold"


@dataclasses.dataclass
class Window:
    start: datetime
    size: Decimal


class Limits(BaseModel):
    rpm: int
    usd_per_day: float
    api_key: str = "sk-live-123"


async def test_awkward_values_are_stored_as_hashed(audit: AuditLog, database: Database) -> None:
    moment = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    detail = {
        "when": moment,
        "naive": datetime(2026, 3, 1, 8, 0),
        "amount": Decimal("1.10"),
        "regions": {"us", "eu", "apac"},
        "frozen": frozenset({3, 1, 2}),
        "pair": (1, "two"),
        "limits": Limits(rpm=60, usd_per_day=2.5),
        "window": Window(moment, Decimal("0.5")),
        "tier": Tier.GOLD,
        "uuid": UUID("12345678-1234-5678-1234-567812345678"),
        "floats": [0.1, 1 / 3, 1e300, -0.0, 2.5e-308, 1.0, 123456789.123456789],
        "big": 2**70,
        "non_finite": [float("nan"), float("inf"), float("-inf")],
        "unicode": 'é 漢字 🙂 \u2028 "quoted" \\ back',
        "nul": "a\x00b",
        "surrogate": "x\ud800y",
        "int_keys": {1: "one", 2: {3: "three"}},
        "empty": {},
        "bytes": b"raw",
        "nested": [[{"z": 1, "a": [True, False, None]}]],
    }
    audit.record("team.update", actor=DANA, before=None, after=[1, 2.5], detail=detail)
    audit.record("team.update", actor=None, target="t\x00x", detail={"ok": "ü"})
    await audit.flush()

    assert audit.verify().ok
    stored = rows(database)
    for row in stored:
        assert entry_hash(row) == row["hash"]
    got = stored[0]["detail"]
    assert got["when"] == "2026-03-01T10:30:15.123456+00:00"
    assert got["naive"] == "2026-03-01T08:00:00.000000+00:00"
    assert got["amount"] == "1.10"
    assert got["regions"] == ["apac", "eu", "us"]
    assert got["frozen"] == [1, 2, 3]
    assert got["pair"] == [1, "two"]
    assert got["limits"] == {"rpm": 60, "usd_per_day": 2.5}  # api_key redacted
    assert got["window"] == {"start": "2026-03-01T10:30:15.123456+00:00", "size": "0.5"}
    assert got["tier"] == "gold"
    assert got["uuid"] == "12345678-1234-5678-1234-567812345678"
    assert got["floats"] == [0.1, 1 / 3, 1e300, -0.0, 2.5e-308, 1.0, 123456789.123456789]
    assert got["big"] == 2**70
    assert got["non_finite"] == ["NaN", "Infinity", "-Infinity"]
    assert got["unicode"] == 'é 漢字 🙂 \u2028 "quoted" \\ back'
    assert got["nul"] == "a\ufffdb"
    assert got["surrogate"] == "x?y"
    assert got["int_keys"] == {"1": "one", "2": {"3": "three"}}
    assert got["bytes"] == "raw"
    assert got["nested"] == [[{"z": 1, "a": [True, False, None]}]]
    assert stored[0]["before"] is None
    assert stored[0]["after"] == [1, 2.5]
    anonymous = stored[1]
    assert (anonymous["actor"], anonymous["actor_kind"], anonymous["source_ip"]) == (
        "anonymous",
        "anonymous",
        None,
    )
    assert anonymous["target"] == "t\ufffdx"


async def test_a_modified_entry_is_caught_at_its_seq(audit: AuditLog, database: Database) -> None:
    await write(audit, 6)
    execute(database, update(audit_log).where(audit_log.c.seq == 4).values(after={"rpm": 1000}))
    result = audit.verify()
    assert (result.ok, result.first_broken_seq, result.checked) == (False, 4, 4)
    assert result.reason == "hash mismatch: the entry was modified"


async def test_a_modified_column_is_caught(audit: AuditLog, database: Database) -> None:
    await write(audit, 3)
    execute(database, update(audit_log).where(audit_log.c.seq == 2).values(actor="mallory"))
    assert audit.verify().first_broken_seq == 2
    execute(database, update(audit_log).where(audit_log.c.seq == 2).values(actor="dana"))
    assert audit.verify().ok
    later = datetime.now(UTC) + timedelta(seconds=1)
    stored_later = later.replace(tzinfo=None) if database.backend == "sqlite" else later
    execute(database, update(audit_log).where(audit_log.c.seq == 3).values(at=stored_later))
    assert audit.verify().first_broken_seq == 3


async def test_a_rehashed_modification_is_caught_at_the_next_entry(
    audit: AuditLog, database: Database
) -> None:
    await write(audit, 5)
    row = rows(database)[2]
    row["after"] = {"rpm": 1000}
    forged = entry_hash(row)
    execute(
        database,
        update(audit_log).where(audit_log.c.seq == 3).values(after={"rpm": 1000}, hash=forged),
    )
    result = audit.verify()
    assert result.first_broken_seq == 4
    assert result.reason == "prev_hash does not match entry 3: an entry was removed or reordered"


async def test_a_deleted_entry_is_caught(audit: AuditLog, database: Database) -> None:
    await write(audit, 5)
    execute(database, delete(audit_log).where(audit_log.c.seq == 3))
    result = audit.verify()
    assert (result.ok, result.first_broken_seq) == (False, 4)
    assert result.reason == "prev_hash does not match entry 2: an entry was removed or reordered"

    execute(database, delete(audit_log).where(audit_log.c.seq == 1))
    result = audit.verify()
    assert result.first_broken_seq == 2
    assert result.reason is not None and "genesis" in result.reason


async def test_reordered_entries_are_caught(audit: AuditLog, database: Database) -> None:
    await write(audit, 4)
    for old, new in ((2, 100), (3, 2), (100, 3)):
        execute(database, update(audit_log).where(audit_log.c.seq == old).values(seq=new))
    result = audit.verify()
    assert (result.ok, result.first_broken_seq) == (False, 2)


async def test_invalid_json_written_by_hand_is_a_mismatch(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'keel.db'}")
    database.migrate()
    audit = AuditLog(database, flush_interval_s=0.01)
    await audit.start()
    await write(audit, 2)
    await audit.stop()
    with database.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE audit_log SET detail = '{not json' WHERE seq = 2")
    result = audit.verify()
    assert (result.first_broken_seq, result.reason) == (
        2,
        "hash mismatch: the entry was modified",
    )
    database.dispose()


async def test_verify_walks_in_pages(audit: AuditLog, database: Database) -> None:
    await write(audit, 7)
    assert audit.verify(page_size=2).checked == 7
    execute(database, delete(audit_log).where(audit_log.c.seq == 6))
    assert audit.verify(page_size=2).first_broken_seq == 7


async def test_two_replicas_write_one_chain(database_url: str) -> None:
    first_db, second_db = Database(database_url), Database(database_url)
    first_db.migrate()
    replicas = [
        AuditLog(first_db, batch_size=7, flush_interval_s=0.001),
        AuditLog(second_db, batch_size=5, flush_interval_s=0.001),
    ]
    for replica in replicas:
        await replica.start()

    async def produce(replica: AuditLog, name: str) -> None:
        for index in range(150):
            replica.record("key.create", actor=Actor(name), target=f"{name}-{index}")
            if index % 10 == 0:
                await asyncio.sleep(0.002)

    await asyncio.gather(*(produce(r, f"r{i}") for i, r in enumerate(replicas)))

    # And the writers' own transactions racing each other from threads, one entry at a time.
    def hammer(replica: AuditLog, name: str) -> None:
        for index in range(40):
            replica._append([_entry_for(name, index)])

    threads = [
        threading.Thread(target=hammer, args=(replica, f"t{i}"))
        for i, replica in enumerate(replicas)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for replica in replicas:
        await replica.stop()

    stored = rows(first_db)
    assert len(stored) == 2 * 150 + 2 * 40
    assert [row["seq"] for row in stored] == list(range(1, len(stored) + 1))
    assert {row["actor"] for row in stored} == {"r0", "r1", "t0", "t1"}
    result = replicas[0].verify()
    assert (result.ok, result.checked) == (True, len(stored))
    first_db.dispose()
    second_db.dispose()


def _entry_for(name: str, index: int) -> dict[str, Any]:
    return audit_module._entry(
        "key.rotate",
        actor=Actor(name),
        target=f"{name}-{index}",
        outcome="ok",
        values={"before": None, "after": None, "detail": {"index": index}},
        request_id=None,
        source_ip=None,
    )


# -- the writer -----------------------------------------------------------------------------


async def test_a_refused_entry_is_dropped_loudly_and_the_rest_written(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    audit = AuditLog(database, flush_interval_s=60)
    await audit.start()
    for index in range(5):
        audit.record("user.create", actor=DANA, target=f"user-{index}")
    # The third entry reuses the first one's id: the database refuses it (unique id).
    audit._queue[2]["id"] = audit._queue[0]["id"]
    with caplog.at_level(logging.ERROR, logger="keel.audit"):
        await audit.flush()
    await audit.stop()

    stored = rows(database)
    assert [row["target"] for row in stored] == ["user-0", "user-1", "user-3", "user-4"]
    assert (audit.written, audit.dropped) == (4, 1)
    assert audit.verify().ok
    lost = [record.getMessage() for record in caplog.records if "AUDIT ENTRY LOST" in record.msg]
    assert len(lost) == 1 and "user-2" in lost[0]


async def test_stop_writes_everything_queued(database: Database) -> None:
    audit = AuditLog(database, batch_size=20, flush_interval_s=60)
    await audit.start()
    for index in range(55):
        audit.record("team.create", actor=DANA, target=str(index))
    await audit.stop()
    assert len(rows(database)) == 55
    assert audit.verify().ok


async def test_a_write_failure_is_retried(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    audit = AuditLog(database, flush_interval_s=0.01)
    real = audit._append
    calls = []

    def flaky(entries: list[dict[str, Any]]) -> None:
        calls.append(len(entries))
        if len(calls) == 1:
            raise ConnectionError("database went away")
        real(entries)

    monkeypatch.setattr(audit, "_append", flaky)
    await audit.start()
    await write(audit, 3)
    await audit.stop()
    assert len(calls) == 2
    assert len(rows(database)) == 3


async def test_record_never_raises(
    audit: AuditLog, database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no")

    cycle: dict[str, Any] = {}
    cycle["self"] = cycle
    audit.record("a" * 500, actor=Actor("b" * 500), target="c" * 500, detail=cycle)
    audit.record("odd", actor=None, after=Unprintable(), outcome="o" * 100)
    await audit.flush()
    stored = rows(database)
    assert len(stored) == 2
    assert (len(stored[0]["action"]), len(stored[0]["actor"]), len(stored[0]["target"])) == (
        64,
        128,
        255,
    )
    assert stored[0]["detail"] == "<unrecordable dict>"
    assert stored[1]["after"] == "<unrecordable Unprintable>"
    assert audit.verify().ok


async def test_record_from_a_worker_thread(audit: AuditLog, database: Database) -> None:
    await asyncio.to_thread(audit.record, "registry.alias", actor=DANA, target="curie")
    await asyncio.wait_for(audit.flush(), 5)
    assert [row["target"] for row in rows(database)] == ["curie"]


async def test_explicit_source_ip_and_request_id(audit: AuditLog, database: Database) -> None:
    audit.record("key.revoke", actor=DANA, source_ip="192.0.2.1", request_id="req_1")
    await audit.flush()
    assert (rows(database)[0]["source_ip"], rows(database)[0]["request_id"]) == (
        "192.0.2.1",
        "req_1",
    )


# -- redaction ------------------------------------------------------------------------------


def test_redact_drops_secret_keys_at_any_depth() -> None:
    value = {
        "name": "ci-key",
        "api_key": "sk-1",
        "API-Key": "sk-2",
        "apiKey": "sk-3",
        "Password": "hunter2",
        "secret_hash": "abc",
        "Authorization": "Bearer x",
        "token": "t",
        "access_token": "t",
        "client_secret": "s",
        "limits": {"max_tokens": 10, "tokens_per_day": 5, "refresh_token": "r"},
        "keys": [{"secret": "s", "prefix": "kl_ab"}, ("x", {"password": "p"})],
        "prompt_tokens": 3,
    }
    assert redact(value) == {
        "name": "ci-key",
        "limits": {"max_tokens": 10, "tokens_per_day": 5},
        "keys": [{"prefix": "kl_ab"}, ["x", {}]],
        "prompt_tokens": 3,
    }
    assert redact("plain") == "plain"
    assert not is_secret_key("token_count") and is_secret_key("X_AUTHORIZATION")


async def test_record_redacts(audit: AuditLog, database: Database) -> None:
    audit.record(
        "key.create",
        actor=DANA,
        before=None,
        after={"id": "key_1", "secret": "kl_live_x", "secret_hash": "f00"},
        detail={"headers": {"authorization": "Bearer kl_live_x", "user-agent": "curl"}},
    )
    await audit.flush()
    row = rows(database)[0]
    assert row["after"] == {"id": "key_1"}
    assert row["detail"] == {"headers": {"user-agent": "curl"}}
    assert "kl_live_x" not in json.dumps(audit.query())


# -- queries and export ---------------------------------------------------------------------


async def test_query_filters_and_pages(audit: AuditLog) -> None:
    await write(audit, 2, action="key.create", actor=Actor("alice"))
    await asyncio.sleep(0.01)
    middle = datetime.now(UTC)
    await asyncio.sleep(0.01)
    await write(audit, 2, action="key.revoke", actor=Actor("bob"))
    await write(audit, 1, action="keys_x", actor=Actor("bob"))
    await write(audit, 1, action="team.update", actor=Actor("bob"))

    def seqs(**filters: Any) -> list[int]:
        return [entry["seq"] for entry in audit.query(**filters)]

    assert seqs() == [1, 2, 3, 4, 5, 6]
    assert seqs(since=middle) == [3, 4, 5, 6]
    assert seqs(since=middle.replace(tzinfo=None)) == [3, 4, 5, 6]  # naive is UTC
    assert seqs(since=middle.astimezone(timezone(timedelta(hours=-7)))) == [3, 4, 5, 6]
    assert seqs(until=middle) == [1, 2]
    assert seqs(actor="alice") == [1, 2]
    assert seqs(action="key.revoke") == [3, 4]
    assert seqs(action="key.*") == [1, 2, 3, 4]
    assert seqs(action="key_*") == []  # "_" is literal, not a LIKE wildcard
    assert seqs(action="keys_*") == [5]
    assert seqs(action="%") == []
    assert seqs(actor="bob", action="key.*", since=middle) == [3, 4]
    assert seqs(limit=2) == [1, 2]
    assert seqs(limit=2, after_seq=2) == [3, 4]
    assert seqs(after_seq=6) == []
    for odd in ("' OR 1=1 --", "x\x00y", "a" * 10_000, "\ud800"):
        assert seqs(actor=odd) == []
        assert seqs(action=odd) == []

    entry = audit.query(limit=1)[0]
    assert entry["at"].endswith("+00:00") and "T" in entry["at"]
    assert set(entry) == {column.name for column in audit_log.columns}


async def test_export_is_paged_jsonl(audit: AuditLog, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_module, "PAGE_SIZE", 3)
    await write(audit, 7, target="équipe")
    lines = list(audit.export())
    assert len(lines) == 7 and all(line.endswith("\n") for line in lines)
    assert "équipe" in lines[0]  # not \u-escaped
    entries = [json.loads(line) for line in lines]
    assert [entry["seq"] for entry in entries] == list(range(1, 8))
    assert [json.loads(line)["seq"] for line in audit.export(after_seq=5)] == [6, 7]
    assert list(audit.export(actor="nobody")) == []


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
