"""The audit-log writer (refusals, retries, never raising), redaction, and queries and
export, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

import keel.governance.audit as audit_module
from keel.governance.audit import AuditLog, redact
from keel.governance.audit_chain import is_secret_key
from keel.governance.tables import audit_log
from keel.identity import Actor
from keel.store import Database
from tests.governance.audit_helpers import DANA, rows, write

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
