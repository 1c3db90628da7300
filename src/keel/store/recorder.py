"""The batched writer for request records.

`add()` is all the request path does: append to an in-memory queue. A background task writes
batches in a worker thread (see `keel.store.batching`). A failed write keeps its rows and is
retried; `stop()` flushes what is left, so a graceful shutdown loses nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from keel.store.batching import BatchWriter
from keel.store.database import Database

__all__ = ["RequestRecorder"]

log = logging.getLogger("keel.store")


class RequestRecorder(BatchWriter[dict[str, Any]]):
    _task_name = "keel-request-recorder"
    _noun = "request records"
    _log = log

    def __init__(
        self,
        database: Database,
        *,
        batch_size: int = 500,
        flush_interval_s: float = 0.2,
        prepare: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """`prepare` changes a record in place before it is stored (PII masking of error
        messages, say); it runs in the writer's thread, never on the request path."""
        super().__init__(batch_size=batch_size, flush_interval_s=flush_interval_s)
        self._database = database
        self._prepare = prepare

    def add(self, row: dict[str, Any]) -> None:
        self._enqueue(row)

    async def stop(self) -> None:
        await super().stop()
        if self._queue:
            log.error("request recorder stopped with %d records unwritten", len(self._queue))

    def _write_batch(self, rows: list[dict[str, Any]]) -> None:
        if self._prepare is not None:
            for row in rows:
                try:
                    self._prepare(row)
                except Exception:
                    log.exception("preparing request record %s failed", row.get("id"))
        self._database.insert_records(rows)

    def _write_one(self, row: dict[str, Any]) -> None:
        # Only after the batch holding it was refused, which has already prepared it.
        self._database.insert_records([row])

    def _report_dropped(self, row: dict[str, Any], error: Exception) -> None:
        log.error("dropped request record %s: %s", row.get("id"), type(error).__name__)
