"""The batched writer for request records.

`add()` is all the request path does: append to an in-memory queue. A background task writes
batches in a worker thread. A failed write keeps its rows and is retried; `stop()` flushes what is
left, so a graceful shutdown loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import DataError, IntegrityError

from keel.store.database import Database

__all__ = ["RequestRecorder"]

log = logging.getLogger("keel.store")


class RequestRecorder:
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
        self._database = database
        self._prepare = prepare
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._queue: deque[dict[str, Any]] = deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.written = 0
        self.dropped = 0

    @property
    def pending(self) -> int:
        return len(self._queue)

    def add(self, row: dict[str, Any]) -> None:
        self._queue.append(row)
        self._idle.clear()
        if len(self._queue) >= self._batch_size:
            self._wakeup.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="keel-request-recorder")

    async def flush(self) -> None:
        """Wait until everything added so far is in the database."""
        self._wakeup.set()
        await self._idle.wait()

    async def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        if self._queue:
            log.error("request recorder stopped with %d records unwritten", len(self._queue))

    def _write(self, rows: list[dict[str, Any]]) -> None:
        if self._prepare is not None:
            for row in rows:
                try:
                    self._prepare(row)
                except Exception:
                    log.exception("preparing request record %s failed", row.get("id"))
        self._database.insert_records(rows)

    def _insert_one_by_one(self, rows: list[dict[str, Any]]) -> int:
        written = 0
        for row in rows:
            try:
                self._database.insert_records([row])
                written += 1
            except (DataError, IntegrityError) as exc:
                self.dropped += 1
                log.error("dropped request record %s: %s", row.get("id"), type(exc).__name__)
        return written

    async def _run(self) -> None:
        failures = 0
        while True:
            if len(self._queue) < self._batch_size and not self._stopping:
                # Let records accumulate into one batch, unless a full batch or flush() wakes us.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self._flush_interval_s)
                self._wakeup.clear()
            if not self._queue:
                self._idle.set()
                if self._stopping:
                    return
                continue
            batch = [self._queue.popleft() for _ in range(min(self._batch_size, len(self._queue)))]
            try:
                await asyncio.to_thread(self._write, batch)
            except (DataError, IntegrityError):
                # One bad row must not hold up every record behind it: write the rows one by
                # one and drop only those the database refuses.
                self.written += await asyncio.to_thread(self._insert_one_by_one, batch)
                continue
            except Exception as exc:
                self._queue.extendleft(reversed(batch))
                failures += 1
                log.warning(
                    "writing %d request records failed (%s); retrying",
                    len(batch),
                    type(exc).__name__,
                )
                if self._stopping and failures >= 5:
                    return
                await asyncio.sleep(min(0.1 * 2**failures, 5.0))
                continue
            failures = 0
            self.written += len(batch)
            if not self._queue:
                self._idle.set()
