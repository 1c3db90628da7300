"""The tamper-evident audit log's hash chain and its verification, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import hashlib
import itertools
import json
import threading
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

from pydantic import BaseModel
from sqlalchemy import delete, update

import keel.governance.audit as audit_module
from keel.governance.audit import AuditLog
from keel.governance.audit_chain import GENESIS_HASH, HASHED_COLUMNS, entry_hash
from keel.governance.tables import audit_log
from keel.identity import Actor
from keel.store import Database
from tests.governance.audit_helpers import DANA, execute, rows, write

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


async def test_seq_is_64_bit(audit: AuditLog, database: Database) -> None:
    await write(audit, 1)
    execute(database, update(audit_log).where(audit_log.c.seq == 1).values(seq=2**40))
    await write(audit, 1)  # numbered after the newest entry, past any 32-bit integer
    assert [row["seq"] for row in rows(database)] == [2**40, 2**40 + 1]
    assert audit.verify().ok
    assert [entry["seq"] for entry in audit.query(after_seq=2**40)] == [2**40 + 1]
    assert audit.query(after_seq=2**63 - 1) == []


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
