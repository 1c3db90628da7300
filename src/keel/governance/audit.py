"""The tamper-evident audit log: who did what, to what, when, with what outcome.

`record()` is all a caller does: it snapshots the entry (values made JSON, secrets dropped) and
appends it to an in-memory queue; it never blocks and never raises. A background task writes
batches in a worker thread. Each batch is one transaction that first takes the chain's lock,
reads the newest entry's hash and chains the batch onto it, so replicas sharing a database
append to one chain and never fork it. `verify()` walks the chain and names the first entry
that was changed, removed or reordered. The chain itself lives in `keel.governance.audit_chain`.
`record_refusal()` is for refusals that name nobody: they are tallied per source
(`keel.governance.audit_refusals`), so an anonymous client cannot grow the log at will.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Text, cast, select, text
from sqlalchemy.sql.elements import ColumnElement

from keel.governance.audit_chain import (
    GENESIS_HASH,
    ChainCheck,
    VerifyResult,
    entry_hash,
    format_at,
    redact,
    to_json_value,
)
from keel.governance.audit_refusals import RefusalTally
from keel.governance.tables import audit_log
from keel.identity import Actor
from keel.store.batching import BatchWriter
from keel.store.database import Database

__all__ = ["AuditLog", "VerifyResult", "redact"]

log = logging.getLogger("keel.audit")

# pg_advisory_xact_lock key for "append to the audit chain" (the bytes of "keelaudt").
CHAIN_LOCK_KEY = 0x6B65656C61756474
PAGE_SIZE = 1000
_JSON_COLUMNS = ("before", "after", "detail")
# Text columns and their lengths (from keel/governance/tables.py): longer values are cut before
# hashing, so the database never refuses an entry for its length.
_LIMITS: dict[str, int] = {
    name: int(getattr(audit_log.c[name].type, "length", None) or 255)
    for name in (
        "actor",
        "actor_kind",
        "key_id",
        "team",
        "action",
        "target",
        "outcome",
        "source_ip",
        "request_id",
    )
}
_UNREADABLE = object()  # a stored JSON value that does not parse: it cannot hash as written


class AuditLog(BatchWriter[dict[str, Any]]):
    _task_name = "keel-audit-log"
    _noun = "audit entries"
    _log = log

    def __init__(
        self,
        database: Database,
        *,
        batch_size: int = 500,
        flush_interval_s: float = 0.2,
        refusal_window_s: float = 60.0,
        refusal_max_sources: int = 1000,
    ) -> None:
        super().__init__(batch_size=batch_size, flush_interval_s=flush_interval_s)
        self._database = database
        self._stopped = False
        self._refusals = RefusalTally(
            self.record, window_s=refusal_window_s, max_sources=refusal_max_sources
        )
        self._refusal_timer: asyncio.TimerHandle | None = None

    # -- writing ---------------------------------------------------------------------------

    def record(
        self,
        action: str,
        *,
        actor: Actor | None,
        target: str | None = None,
        outcome: str = "ok",
        before: Any = None,
        after: Any = None,
        detail: dict[str, Any] | None = None,
        request_id: str | None = None,
        source_ip: str | None = None,
    ) -> None:
        """Queue one entry. Safe from any thread; never blocks, never raises."""
        try:
            entry = _entry(
                action,
                actor=actor,
                target=target,
                outcome=outcome,
                values={"before": before, "after": after, "detail": detail},
                request_id=request_id,
                source_ip=source_ip,
            )
        except Exception:
            log.exception("AUDIT ENTRY LOST: could not build the entry for %r", action)
            return
        if self._stopped:
            _log_lost([entry], "the audit log is stopped")
            return
        self._enqueue(entry)

    def record_refusal(
        self,
        action: str,
        *,
        code: str | None,
        reason: str,
        target: str,
        outcome: str,
        source_ip: str | None,
    ) -> None:
        """A refusal that names nobody: the first from its source in a window is an entry at
        once, the rest one summary entry when the window ends. Call it on the event loop the
        log runs on; never blocks, never raises."""
        try:
            self._refusals.add(
                action,
                code=code,
                reason=reason,
                target=target,
                outcome=outcome,
                source_ip=source_ip,
            )
            if self._refusal_timer is None:
                self._arm_refusal_timer()
        except Exception:
            log.exception("AUDIT ENTRY LOST: could not tally a refusal (%s)", action)

    def _arm_refusal_timer(self) -> None:
        delay = self._refusals.seconds_to_next_end()
        if delay is None or self._loop is None or self._stopped:
            self._refusal_timer = None
            return
        # A little late rather than early: an early wake-up would find nothing ended yet.
        self._refusal_timer = self._loop.call_later(delay + 0.01, self._refusals_ended)

    def _refusals_ended(self) -> None:
        try:
            self._refusals.expire()
        except Exception:
            log.exception("AUDIT ENTRY LOST: could not write refusal summaries")
        self._arm_refusal_timer()

    async def stop(self) -> None:
        """Write the refusal summaries and everything queued, then stop."""
        if self._refusal_timer is not None:
            self._refusal_timer.cancel()
            self._refusal_timer = None
        self._refusals.close()
        await super().stop()
        self._stopped = True
        if self._queue:
            _log_lost(list(self._queue), "the audit log stopped before they were written")
            self._queue.clear()

    def _write_batch(self, entries: list[dict[str, Any]]) -> None:
        # Entry by entry too, once a batch is refused: each is then chained onto the entry
        # actually written before it, not onto one the database turned away.
        self._append(entries)

    def _report_dropped(self, entry: dict[str, Any], error: Exception) -> None:
        _log_lost([entry], f"the database refused it ({type(error).__name__}: {error})")

    def _failure_text(self, error: Exception) -> str:
        # Entries are redacted before they are queued, so the driver's message (which can
        # quote them) may go to the log.
        return f"{type(error).__name__}: {error}"

    def _append(self, entries: list[dict[str, Any]]) -> None:
        """Chain `entries` onto the newest entry and insert them, in one transaction."""
        with self._database.engine.connect() as connection:
            last = self._lock_chain(connection)
            seq, prev_hash = (last[0], last[1]) if last is not None else (0, GENESIS_HASH)
            rows = []
            for entry in entries:
                # seq is given, not left to the database, so that chain order and seq order
                # are the same by construction on every backend and driver.
                seq += 1
                row = {**entry, "seq": seq, "prev_hash": prev_hash}
                row["hash"] = prev_hash = entry_hash(row)
                rows.append(row)
            connection.execute(audit_log.insert(), rows)
            connection.commit()

    def _lock_chain(self, connection: Connection) -> tuple[int, str] | None:
        """Take the chain's lock for this transaction; return the newest (seq, hash)."""
        newest = select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc())
        backend = connection.dialect.name
        if backend == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CHAIN_LOCK_KEY})
        elif backend == "sqlite":
            # The write lock up front: a deferred transaction would read the head under a
            # shared lock that another writer could overtake before our insert.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            newest = newest.with_for_update()
        row = connection.execute(newest.limit(1)).first()
        return None if row is None else (int(row[0]), str(row[1]))

    # -- reading ---------------------------------------------------------------------------

    def verify(self, *, page_size: int = PAGE_SIZE) -> VerifyResult:
        """Walk the whole chain in seq order, a page at a time; report the first entry whose
        hash or link does not hold."""
        check = ChainCheck()
        columns = [
            cast(column, Text).label(column.name) if column.name in _JSON_COLUMNS else column
            for column in audit_log.columns
        ]
        after_seq: int | None = None
        while True:
            query = select(*columns).order_by(audit_log.c.seq).limit(page_size)
            if after_seq is not None:
                query = query.where(audit_log.c.seq > after_seq)
            with self._database.engine.connect() as connection:
                rows = [dict(row._mapping) for row in connection.execute(query)]
            if not rows:
                return check.result()
            for row in rows:
                for name in _JSON_COLUMNS:
                    row[name] = _load_json(row[name])
                if not check.add(row):
                    return check.result()
            after_seq = rows[-1]["seq"]

    def query(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        actor: str | None = None,
        action: str | None = None,
        limit: int = 100,
        after_seq: int | None = None,
    ) -> list[dict[str, Any]]:
        """Entries oldest first (seq order), as JSON-ready dicts (`at` as ISO-8601 text).
        `since` is inclusive, `until` exclusive, naive times are UTC; `action` ending in "*"
        matches by prefix ("key.*"). Page on with `after_seq` = the last seq seen."""
        conditions = self._conditions(since, until, actor, action)
        if conditions is None:
            return []
        if after_seq is not None:
            conditions.append(audit_log.c.seq > after_seq)
        query = select(audit_log).where(*conditions).order_by(audit_log.c.seq).limit(limit)
        with self._database.engine.connect() as connection:
            return [_public(dict(row._mapping)) for row in connection.execute(query)]

    def export(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        actor: str | None = None,
        action: str | None = None,
        after_seq: int | None = None,
    ) -> Iterator[str]:
        """Every matching entry as one JSON line ("\\n"-terminated), read a page at a time."""
        while True:
            page = self.query(
                since=since,
                until=until,
                actor=actor,
                action=action,
                limit=PAGE_SIZE,
                after_seq=after_seq,
            )
            for entry in page:
                yield json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n"
            if len(page) < PAGE_SIZE:
                return
            after_seq = page[-1]["seq"]

    def _conditions(
        self,
        since: datetime | None,
        until: datetime | None,
        actor: str | None,
        action: str | None,
    ) -> list[ColumnElement[bool]] | None:
        """The WHERE clauses, or None where no entry can match (a filter the columns could
        never hold: too long, or with characters the database refuses to compare)."""
        conditions: list[ColumnElement[bool]] = []
        if since is not None:
            conditions.append(audit_log.c.at >= self._stored_time(since))
        if until is not None:
            conditions.append(audit_log.c.at < self._stored_time(until))
        if actor is not None:
            if not _storable(actor, _LIMITS["actor"]):
                return None
            conditions.append(audit_log.c.actor == actor)
        if action is not None:
            if not _storable(action.removesuffix("*"), _LIMITS["action"]):
                return None
            if action.endswith("*"):
                prefix = action[:-1]
                escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                conditions.append(audit_log.c.action.like(escaped + "%", escape="\\"))
            else:
                conditions.append(audit_log.c.action == action)
        return conditions

    def _stored_time(self, at: datetime) -> datetime:
        at = (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC)
        # SQLite stores the UTC wall time without an offset, and compares it as text.
        return at.replace(tzinfo=None) if self._database.backend == "sqlite" else at


def _entry(
    action: str,
    *,
    actor: Actor | None,
    target: str | None,
    outcome: str,
    values: dict[str, Any],
    request_id: str | None,
    source_ip: str | None,
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": f"aud_{uuid.uuid4().hex}",
        "at": datetime.now(UTC),
        "actor": actor.name if actor is not None else "anonymous",
        "actor_kind": actor.kind if actor is not None else "anonymous",
        "key_id": actor.key_id if actor is not None else None,
        "team": actor.team if actor is not None else None,
        "action": action,
        "target": target,
        "outcome": outcome,
        "source_ip": source_ip if source_ip is not None else getattr(actor, "source_ip", None),
        "request_id": request_id,
    }
    for name, limit in _LIMITS.items():
        if entry[name] is not None:
            entry[name] = to_json_value(str(entry[name]))[:limit]
    # Snapshot now: the caller may change its objects after record() returns.
    for name, value in values.items():
        try:
            entry[name] = redact(to_json_value(value))
        except Exception as exc:  # a cycle, a nesting too deep, a __str__ that raises
            log.warning("audit %s: %s cannot be recorded (%s)", action, name, type(exc).__name__)
            entry[name] = f"<unrecordable {type(value).__name__}>"
    return entry


def _log_lost(entries: list[dict[str, Any]], why: str) -> None:
    # The entry itself goes to the error log, so an operator can still recover it.
    for entry in entries:
        body = json.dumps({**entry, "at": format_at(entry["at"])}, ensure_ascii=False)
        log.error("AUDIT ENTRY LOST (%s): %s", why, body)


def _storable(value: str, limit: int) -> bool:
    if len(value) > limit or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _load_json(raw: str | None) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return _UNREADABLE


def _public(row: dict[str, Any]) -> dict[str, Any]:
    row["at"] = format_at(row["at"])
    return row
