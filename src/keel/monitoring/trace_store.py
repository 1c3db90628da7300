"""The spans Keel keeps (table `spans`, migration 0005), written in batches off the request
path, read back per request, and deleted after `tracing.retention_days`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Table,
    delete,
    insert,
    select,
)

from keel.monitoring.spans import Span, SpanTree
from keel.store.batching import BatchWriter
from keel.store.schema import metadata

if TYPE_CHECKING:
    from keel.gateway.call import Call
    from keel.store import Database

__all__ = ["PendingTrace", "SpanWriter", "delete_spans_before", "spans", "spans_of_request"]

log = logging.getLogger("keel.monitoring.traces")

_NAME = 255
_MESSAGE = 1000

spans = Table(
    "spans",
    metadata,
    Column("trace_id", String(32), primary_key=True),
    Column("span_id", String(16), primary_key=True),
    Column("parent_span_id", String(16)),
    Column("request_id", String(64)),
    Column("position", Integer, nullable=False),  # within its tree: the root is 0
    Column("name", String(_NAME), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("start_time", DateTime(timezone=True), nullable=False),
    Column("end_time", DateTime(timezone=True), nullable=False),
    Column("duration_ms", Float, nullable=False),
    Column("status", String(8), nullable=False),
    Column("status_message", String(_MESSAGE)),
    Column("attributes", JSON, nullable=False),
    Index("ix_spans_request_id", "request_id"),
    Index("ix_spans_start_time", "start_time"),
)


@dataclass(slots=True)
class PendingTrace:
    """A finished call whose spans are still to be built, or a tree already built; `exported`
    keeps a batch written twice (after a database failure) from being exported twice."""

    call: Call | None = None
    record: dict[str, Any] | None = None
    tree: SpanTree | None = None
    exported: bool = False


class SpanWriter(BatchWriter[PendingTrace]):
    """Builds each call's span tree in the writer's thread, hands it to `export` once, and
    stores its spans unless `keep` is off."""

    _task_name = "keel-span-writer"
    _noun = "traces"
    _log = log

    def __init__(
        self,
        database: Database,
        *,
        build: Callable[[PendingTrace], SpanTree],
        export: Callable[[SpanTree], None] | None,
        keep: bool,
        batch_size: int,
        flush_interval_s: float,
    ) -> None:
        super().__init__(batch_size=batch_size, flush_interval_s=flush_interval_s)
        self._database = database
        self._build = build
        self._export = export
        self._keep = keep

    def add(self, item: PendingTrace) -> None:
        self._enqueue(item)

    async def stop(self) -> None:
        await super().stop()
        if self._queue:
            log.error("span writer stopped with %d traces unwritten", len(self._queue))

    def _write_batch(self, items: list[PendingTrace]) -> None:
        rows: list[dict[str, Any]] = []
        for item in items:
            tree = self._ready(item)
            if tree is not None and self._keep:
                rows.extend(_row(span, position) for position, span in enumerate(tree.spans))
        if rows:
            with self._database.engine.begin() as connection:
                connection.execute(insert(spans), rows)

    def _ready(self, item: PendingTrace) -> SpanTree | None:
        if item.tree is None:
            try:
                item.tree = self._build(item)
            except Exception:
                log.exception("building the trace of %s failed", _name(item))
                return None
            item.call = item.record = None  # the call's request and answer can go now
        if not item.exported and self._export is not None:
            item.exported = True
            try:
                self._export(item.tree)
            except Exception:
                log.exception("exporting the trace of %s failed", _name(item))
        return item.tree

    def _report_dropped(self, item: PendingTrace, error: Exception) -> None:
        log.error("dropped the trace of %s: %s", _name(item), type(error).__name__)


def spans_of_request(database: Database, request_id: str) -> list[dict[str, Any]]:
    query = (
        select(spans)
        .where(spans.c.request_id == request_id)
        .order_by(spans.c.start_time, spans.c.position)
    )
    with database.engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]


def delete_spans_before(database: Database, cutoff: datetime) -> int:
    with database.engine.begin() as connection:
        result = connection.execute(delete(spans).where(spans.c.start_time < cutoff))
    return int(result.rowcount or 0)


def _row(span: Span, position: int) -> dict[str, Any]:
    return {
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "parent_span_id": span.parent_span_id,
        "request_id": _text(span.request_id, 64),
        "position": position,
        "name": _text(span.name, _NAME) or "span",
        "kind": span.kind,
        "start_time": _moment(span.start_ns),
        "end_time": _moment(span.end_ns),
        "duration_ms": span.duration_ms,
        "status": span.status,
        "status_message": _text(span.status_message, _MESSAGE),
        "attributes": _clean(span.attributes),
    }


def _moment(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC)


def _text(value: str | None, size: int) -> str | None:
    # PostgreSQL refuses NUL in text; a client's text must never make it refuse the batch.
    return None if value is None else value.replace("\x00", "")[:size]


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {str(key): _clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(item) for item in value]
    return value


def _name(item: PendingTrace) -> str:
    if item.call is not None:
        return item.call.request_id
    if item.tree is not None:
        return item.tree.root.request_id or f"trace {item.tree.trace_id}"
    return "a call"
