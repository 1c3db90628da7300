"""The server's side of tracking: the store, and the batched writer that takes logged metrics,
params and tags off the request path. A log request is validated and queued; every read that
could see it (a run, its metric history, a comparison, finishing it) first waits for what is
queued to be written, so a client reads what it logged."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from keel.errors import ConflictError, NotFoundError
from keel.store.batching import BatchWriter
from keel.store.database import Database
from keel.tracking.artifacts import build_artifact_store
from keel.tracking.config import TrackingConfig
from keel.tracking.store import LogBatch, TrackingStore

__all__ = ["RunLogWriter", "TrackingService"]

log = logging.getLogger("keel.tracking")

# Statuses the service remembers per run id, so a log request needs no database read; a run
# seen once is enough (the cache only ever moves a run from running to ended).
_CACHE_LIMIT = 100_000


class RunLogWriter(BatchWriter[LogBatch]):
    _task_name = "keel-tracking-writer"
    _noun = "run log batches"
    _log = log

    def __init__(self, store: TrackingStore, *, batch_size: int, flush_interval_s: float) -> None:
        super().__init__(batch_size=batch_size, flush_interval_s=flush_interval_s)
        self._store = store

    def add(self, batch: LogBatch) -> None:
        self._enqueue(batch)

    def _write_batch(self, items: list[LogBatch]) -> None:
        self._store.write_batches(items)

    def _report_dropped(self, item: LogBatch, error: Exception) -> None:
        log.warning(
            "dropped %d metric points of run %s: the database refused them (%s)",
            len(item.metrics),
            item.run_id,
            type(error).__name__,
        )


class TrackingService:
    def __init__(
        self,
        store: TrackingStore,
        config: TrackingConfig,
        *,
        batch_size: int = 50,
        flush_interval_s: float = 0.2,
    ) -> None:
        self.store = store
        self.config = config
        self.writer = RunLogWriter(store, batch_size=batch_size, flush_interval_s=flush_interval_s)
        self._statuses: dict[str, str] = {}

    @classmethod
    def build(cls, database: Database, config: TrackingConfig, home: Any) -> TrackingService:
        store = TrackingStore(
            database,
            build_artifact_store(config.artifacts, home),
            stale_after_s=config.stale_after_s,
        )
        return cls(store, config)

    async def start(self) -> None:
        await self.writer.start()

    async def stop(self) -> None:
        await self.writer.stop()

    async def settled(self) -> None:
        """Everything logged so far is written."""
        await self.writer.flush()

    def remember(self, run: dict[str, Any]) -> None:
        if len(self._statuses) >= _CACHE_LIMIT:
            self._statuses.clear()
        self._statuses[run["id"]] = run["status"]

    async def accept(self, batch: LogBatch) -> None:
        """Queue a batch for a running run; 404 for an unknown run, 409 for an ended one."""
        status = self._statuses.get(batch.run_id)
        if status is None:
            status = await asyncio.to_thread(self.store.run_status, batch.run_id)
            if status is None:
                raise NotFoundError(f"no run {batch.run_id}", param="run_id")
            self._statuses[batch.run_id] = status
        if status != "running":
            raise ConflictError(
                f"run {batch.run_id} has ended ({status}); start another run to log more"
            )
        self.writer.add(batch)
