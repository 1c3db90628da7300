"""Feedback on requests: thumbs, a categorical label with its expected value, a score, a
corrected output, free text; from a source (a person, code, an LLM judge) under a name.

One row per (request, source, name): posting the same triple again replaces the row, and the
quality aggregates (`feedback_quality`) move with it in the same transaction: the old row's
contribution is taken out, the new one's put in. The single write and the bulk write are one
code path (`FeedbackStore.record_many`), so the aggregates cannot drift from the rows.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from keel.monitoring.feedback_tables import feedback, feedback_quality
from keel.store import Database

__all__ = [
    "SOURCES",
    "Feedback",
    "FeedbackStore",
    "RequestFacts",
    "Source",
    "contribution",
    "hour_of",
    "public_feedback",
]

Source = Literal["human", "code", "llm_judge"]
SOURCES: tuple[Source, ...] = ("human", "code", "llm_judge")

# model, bucket, registry_version, deployment, source, expected, predicted, correct
AggregateKey = tuple[str, datetime, str, str, str, str, str, bool]
_KEY_COLUMNS = (
    "model",
    "bucket",
    "registry_version",
    "deployment",
    "source",
    "expected",
    "predicted",
    "correct",
)
# Rows looked up per statement when checking which triples already exist: well under every
# driver's limit on bound parameters.
_LOOKUP_CHUNK = 900
# Two writers inserting the same new triple at once on PostgreSQL: the loser retries and
# finds the winner's row to replace.
_ATTEMPTS = 3
# SQLite lets a transaction read before it takes the write lock, so two replacements of one
# triple could both take out the same old contribution; writes to it are serialized instead
# (a SQLite database is one process's: replicas share PostgreSQL, which locks the rows).
_SQLITE_WRITES = threading.Lock()


@dataclass(frozen=True, slots=True)
class Feedback:
    """One piece of feedback, already validated (the route and the CLI check the fields)."""

    source: Source = "human"
    name: str = "default"
    thumbs: Literal["up", "down"] | None = None
    label: str | None = None
    expected: str | None = None
    score: float | None = None
    correction: str | None = None
    comment: str | None = None


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What feedback keeps of the request it is about; the aggregates are keyed on it."""

    request_id: str
    requested_at: datetime
    model: str = ""
    registry_version: str = ""
    deployment: str = ""
    team: str | None = None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> RequestFacts:
        return cls(
            request_id=record["id"],
            requested_at=_utc(record["created_at"]),
            model=record.get("model_requested") or "",
            registry_version=record.get("registry_version") or "",
            deployment=record.get("deployment") or "",
            team=record.get("team"),
        )


def hour_of(moment: datetime) -> datetime:
    """The start of the UTC hour holding `moment`: the aggregates' bucket."""
    return _utc(moment).replace(minute=0, second=0, microsecond=0)


def contribution(row: Mapping[str, Any]) -> AggregateKey | None:
    """The aggregate cell a feedback row counts in, or None when it carries no verdict.

    A label with its expected value is a classification (correct when they are equal); thumbs
    alone are binary correctness (up is correct). A score, a correction or a comment alone
    says nothing about correctness and counts nowhere."""
    base = (
        row["model"],
        hour_of(row["requested_at"]),
        row["registry_version"],
        row["deployment"],
        row["source"],
    )
    label, expected = row.get("label"), row.get("expected")
    if label is not None and expected is not None:
        return (*base, expected, label, label == expected)
    if row.get("thumbs") is not None:
        return (*base, "", "", row["thumbs"] == "up")
    return None


@dataclass(frozen=True, slots=True)
class Written:
    created: int
    replaced: int


class FeedbackStore:
    """Feedback rows and their aggregates. Synchronous: call it from a worker thread."""

    def __init__(self, database: Database) -> None:
        self._database = database

    def record(
        self, facts: RequestFacts, item: Feedback, *, by: str, now: datetime | None = None
    ) -> tuple[dict[str, Any], bool]:
        """Store one piece of feedback; returns it as stored, and whether it replaced one."""
        written = self.record_many([(facts, item)], by=by, now=now)
        stored = self.find(facts.request_id, item.source, item.name)
        assert stored is not None  # written just now, and feedback is never deleted
        return stored, written.replaced == 1

    def record_many(
        self,
        items: Sequence[tuple[RequestFacts, Feedback]],
        *,
        by: str,
        now: datetime | None = None,
    ) -> Written:
        """Store many in one transaction (the bulk path: imports, the benchmark). A triple
        given twice keeps its last item."""
        moment = _utc(now or datetime.now(UTC))
        latest: dict[tuple[str, str, str], tuple[RequestFacts, Feedback]] = {}
        for facts, item in items:
            latest[(facts.request_id, item.source, item.name)] = (facts, item)
        if not latest:
            return Written(0, 0)
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                if self._database.backend == "sqlite":
                    with _SQLITE_WRITES, self._database.engine.begin() as connection:
                        return _write(connection, latest, by, moment)
                with self._database.engine.begin() as connection:
                    return _write(connection, latest, by, moment)
            except IntegrityError:
                if attempt == _ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def find(self, request_id: str, source: str, name: str) -> dict[str, Any] | None:
        query = select(feedback).where(
            feedback.c.request_id == request_id,
            feedback.c.source == source,
            feedback.c.name == name,
        )
        with self._database.engine.connect() as connection:
            row = connection.execute(query).first()
        return public_feedback(dict(row._mapping)) if row else None

    def for_request(self, request_id: str) -> list[dict[str, Any]]:
        query = (
            select(feedback)
            .where(feedback.c.request_id == request_id)
            .order_by(feedback.c.created_at, feedback.c.id)
        )
        with self._database.engine.connect() as connection:
            return [public_feedback(dict(row._mapping)) for row in connection.execute(query)]


def public_feedback(row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored row as the API shows it: times in ISO 8601 UTC, null for what a request
    record did not have."""
    return {
        "object": "feedback",
        "id": row["id"],
        "request_id": row["request_id"],
        "source": row["source"],
        "name": row["name"],
        "thumbs": row["thumbs"],
        "label": row["label"],
        "expected": row["expected"],
        "score": row["score"],
        "correction": row["correction"],
        "comment": row["comment"],
        "model": row["model"] or None,
        "registry_version": row["registry_version"] or None,
        "deployment": row["deployment"] or None,
        "created_by": row["created_by"],
        "created_at": _utc(row["created_at"]).isoformat(),
        "updated_at": _utc(row["updated_at"]).isoformat(),
    }


def _write(
    connection: Connection,
    latest: Mapping[tuple[str, str, str], tuple[RequestFacts, Feedback]],
    by: str,
    now: datetime,
) -> Written:
    existing = _existing(connection, list(latest))
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    deltas: Counter[AggregateKey] = Counter()
    for triple, (facts, item) in latest.items():
        row = _row(facts, item, by, now)
        old = existing.get(triple)
        if old is None:
            inserts.append(row)
        else:
            removed = contribution(old)
            if removed is not None:
                deltas[removed] -= 1
            # The first post's time stays: `updated_at` says when it was replaced.
            del row["created_at"]
            updates.append({**row, "row_id": old["id"]})
        added = contribution(row)
        if added is not None:
            deltas[added] += 1
    if inserts:
        connection.execute(insert(feedback), inserts)
    if updates:
        # The SET clause comes from the parameters' column names.
        statement = update(feedback).where(feedback.c.id == bindparam("row_id"))
        connection.execute(statement, updates)
    _apply(connection, deltas)
    return Written(len(inserts), len(updates))


def _existing(
    connection: Connection, triples: list[tuple[str, str, str]]
) -> dict[tuple[str, str, str], Mapping[str, Any]]:
    """The stored rows among `triples`, locked against a concurrent replacement (PostgreSQL;
    SQLite writers are serialized by `_SQLITE_WRITES`)."""
    wanted = set(triples)
    found: dict[tuple[str, str, str], Mapping[str, Any]] = {}
    # By request id alone: a plain IN walks the unique index on (request_id, source, name) on
    # both databases, where a row-value IN can fall back to a scan.
    request_ids = sorted({request_id for request_id, _, _ in triples})
    for start in range(0, len(request_ids), _LOOKUP_CHUNK):
        chunk = request_ids[start : start + _LOOKUP_CHUNK]
        query = select(feedback).where(feedback.c.request_id.in_(chunk)).with_for_update()
        for row in connection.execute(query):
            mapping = dict(row._mapping)
            triple = (mapping["request_id"], mapping["source"], mapping["name"])
            if triple in wanted:
                found[triple] = mapping
    return found


def _row(facts: RequestFacts, item: Feedback, by: str, now: datetime) -> dict[str, Any]:
    return {
        "request_id": facts.request_id,
        "source": item.source,
        "name": item.name,
        "thumbs": item.thumbs,
        "label": item.label,
        "expected": item.expected,
        "score": item.score,
        "correction": item.correction,
        "comment": item.comment,
        "model": facts.model,
        "registry_version": facts.registry_version,
        "deployment": facts.deployment,
        "team": facts.team,
        "requested_at": _utc(facts.requested_at),
        "created_by": by,
        "created_at": now,
        "updated_at": now,
    }


def _apply(connection: Connection, deltas: Counter[AggregateKey]) -> None:
    """Add each delta to its aggregate cell, creating the cell when it is new. Cells go in
    key order so that two PostgreSQL transactions never lock the same cells in opposite
    orders."""
    changes = [
        {**dict(zip(_KEY_COLUMNS, key, strict=True)), "count": delta}
        for key, delta in sorted(deltas.items())
        if delta != 0
    ]
    if not changes:
        return
    statement = _upsert_statement(connection.dialect.name)
    connection.execute(statement, changes)


def _upsert_statement(dialect: str) -> Any:
    # Both dialects spell "insert, or add to the row already there" the same way.
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        pg = postgresql.insert(feedback_quality)
        return pg.on_conflict_do_update(
            index_elements=list(_KEY_COLUMNS),
            set_={"count": feedback_quality.c.count + pg.excluded.count},
        )
    from sqlalchemy.dialects import sqlite

    lite = sqlite.insert(feedback_quality)
    return lite.on_conflict_do_update(
        index_elements=list(_KEY_COLUMNS),
        set_={"count": feedback_quality.c.count + lite.excluded.count},
    )


def _utc(moment: datetime) -> datetime:
    # SQLite keeps no offset; every time Keel writes is UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
