"""A queue written to the database in batches by one background task.

Queueing an item is all a caller does: an append, from any thread, that never waits on the
database. A background task writes batches in a worker thread, one batch at a time and in queue
order. A batch that fails goes back to the front of the queue and is retried, so an outage never
reorders what is written; a batch the database refuses is written one item at a time, and only
the items it refuses are dropped. `stop()` writes what is left before it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections import deque
from typing import ClassVar, Generic, TypeVar

from sqlalchemy.exc import DataError, IntegrityError

__all__ = ["BatchWriter"]

T = TypeVar("T")

# What the database raises about the rows themselves: retrying would fail the same way forever.
_REFUSED = (DataError, IntegrityError)
# While stopping, an unreachable database must not hold shutdown up for ever.
_ATTEMPTS_WHEN_STOPPING = 5


class BatchWriter(ABC, Generic[T]):
    """Subclasses say how to write a batch, and how to report an item the database refused;
    `_write_batch`, `_write_one` and `_report_dropped` run in a worker thread."""

    _task_name: ClassVar[str]
    _noun: ClassVar[str]  # plural, for the log: "request records"
    _log: ClassVar[logging.Logger]

    def __init__(self, *, batch_size: int, flush_interval_s: float) -> None:
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._queue: deque[T] = deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        # Read by the metrics at scrape time (keel.monitoring.metrics): items stored, items the
        # database refused, and batch writes that failed and went back to the queue.
        self.written = 0
        self.dropped = 0
        self.write_failures = 0

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name=self._task_name)

    async def flush(self) -> None:
        """Wait until everything queued so far has been written (or dropped)."""
        self._wakeup.set()
        await self._idle.wait()

    async def stop(self) -> None:
        """Write everything queued, then stop. What is still queued afterwards could not be
        written; reporting it is the subclass's business."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    def _enqueue(self, item: T) -> None:
        self._queue.append(item)
        self._signal(full=len(self._queue) >= self._batch_size)

    @abstractmethod
    def _write_batch(self, items: list[T]) -> None:
        """Write `items` in one go, or raise having written none of them."""

    def _write_one(self, item: T) -> None:
        self._write_batch([item])

    @abstractmethod
    def _report_dropped(self, item: T, error: Exception) -> None: ...

    def _failure_text(self, error: Exception) -> str:
        # The type alone by default: a driver's message can quote the rows' values.
        return type(error).__name__

    def _signal(self, *, full: bool) -> None:
        # Events belong to the writer's loop; a caller in a worker thread hands over to it.
        loop = self._loop
        try:
            on_loop = loop is None or asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._wake(full)
        elif loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake, full)

    def _wake(self, full: bool) -> None:
        self._idle.clear()
        if full:
            self._wakeup.set()

    async def _run(self) -> None:
        failures = 0
        while True:
            if len(self._queue) < self._batch_size and not self._stopping:
                # Let items accumulate into one batch, unless a full batch or flush() wakes us.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self._flush_interval_s)
                self._wakeup.clear()
            if not self._queue:
                self._idle.set()
                if self._stopping:
                    return
                continue
            batch = [self._queue.popleft() for _ in range(min(self._batch_size, len(self._queue)))]
            unwritten = await self._write(batch)
            if unwritten:
                # At the front, so that the retry still writes them before anything queued since.
                self._queue.extendleft(reversed(unwritten))
                failures += 1
                self.write_failures += 1
                if self._stopping and failures >= _ATTEMPTS_WHEN_STOPPING:
                    return
                await asyncio.sleep(min(0.1 * 2**failures, 5.0))
                continue
            failures = 0
            if not self._queue:
                self._idle.set()

    async def _write(self, batch: list[T]) -> list[T]:
        """Write `batch`; return the items to retry."""
        try:
            await asyncio.to_thread(self._write_batch, batch)
        except _REFUSED:
            # One item the database refuses must not hold up, or cost, every item behind it.
            return await asyncio.to_thread(self._write_one_by_one, batch)
        except Exception as exc:
            self._warn_retrying(len(batch), exc)
            return batch
        self.written += len(batch)
        return []

    def _write_one_by_one(self, items: list[T]) -> list[T]:
        """Write each item alone, dropping those the database refuses. Returns the items not
        attempted because the database became unreachable, to retry."""
        for index, item in enumerate(items):
            try:
                self._write_one(item)
            except _REFUSED as exc:
                self.dropped += 1
                self._report_dropped(item, exc)
            except Exception as exc:
                self._warn_retrying(len(items) - index, exc)
                return items[index:]
            else:
                self.written += 1
        return []

    def _warn_retrying(self, count: int, error: Exception) -> None:
        self._log.warning(
            "writing %d %s failed (%s); retrying", count, self._noun, self._failure_text(error)
        )
