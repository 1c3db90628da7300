"""Audit-log test helpers: an actor, and reading, changing and writing entries (the
database and audit-log fixtures are in conftest.py)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from keel.governance.audit import AuditLog
from keel.governance.tables import audit_log
from keel.identity import Actor
from keel.store import Database

DANA = Actor(
    "dana",
    frozenset({"admin"}),
    kind="user",
    key_id="key_dana",
    team="ml-platform",
    source_ip="10.0.0.7",
)


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
