"""Traces of gateway calls (and of anything else that builds a `SpanTree`): kept in Keel's
database for the trace view, exported over OTLP when configured.

The request path pays for an append: `observe` queues the finished call, and the span writer
builds its tree (`call_spans`), masks it, exports it and stores it in its own thread. Spans
older than `tracing.retention_days` are deleted by a background sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from keel import secrets
from keel.monitoring.call_spans import call_spans
from keel.monitoring.spans import SpanTree
from keel.monitoring.trace_store import (
    PendingTrace,
    SpanWriter,
    delete_spans_before,
    spans_of_request,
)

if TYPE_CHECKING:
    from keel.config import Settings
    from keel.gateway.call import Call
    from keel.monitoring.otlp import OtlpExport
    from keel.monitoring.tracing_config import TracingConfig
    from keel.store import Database

__all__ = ["Tracing", "build_tracing"]

log = logging.getLogger("keel.monitoring.traces")


class Tracing:
    def __init__(
        self,
        config: TracingConfig,
        database: Database,
        *,
        mask: Callable[[str], str],
        batch_size: int = 500,
        flush_interval_s: float = 0.2,
    ) -> None:
        self.config = config
        self.keeping = config.enabled
        self._database = database
        self._mask = mask
        self.exporter: OtlpExport | None = None
        if config.otlp.endpoint is not None:
            from keel.monitoring.otlp import OtlpExport

            self.exporter = OtlpExport(config.otlp)
        self._writer = SpanWriter(
            database,
            build=self._build,
            export=self.exporter.export if self.exporter is not None else None,
            keep=config.enabled,
            batch_size=batch_size,
            flush_interval_s=flush_interval_s,
        )
        self._sweeper: asyncio.Task[None] | None = None
        self.dropped = 0  # calls whose spans were dropped because too many were pending

    # -- the request path -----------------------------------------------------------------

    def observe(self, call: Call, record: dict[str, Any]) -> None:
        """The gateway's call observer: queue the finished call, nothing more."""
        if self._writer.pending >= self.config.max_pending:
            self.dropped += 1
            return
        self._writer.add(PendingTrace(call=call, record=record))

    def emit(self, tree: SpanTree) -> None:
        """Queue a finished tree built by anything else Keel runs (see `keel.monitoring.spans`);
        it is masked, exported and kept like a call's."""
        if self._writer.pending >= self.config.max_pending:
            self.dropped += 1
            return
        self._writer.add(PendingTrace(tree=tree))

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        await self._writer.start()
        if self.keeping:
            self._sweeper = asyncio.create_task(self._sweep_periodically(), name="keel-span-sweep")

    async def flush(self) -> None:
        """Wait until everything queued so far is stored and handed to the exporter."""
        await self._writer.flush()

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self._writer.stop()
        if self.exporter is not None:
            # Bounded by the export timeout; a collector that never answers can't hold
            # shutdown for longer than that.
            exporter = self.exporter
            try:
                await asyncio.wait_for(
                    asyncio.to_thread(exporter.shutdown), self.config.otlp.timeout_s + 1
                )
            except TimeoutError:
                log.warning("the OTLP exporter did not finish within its timeout")

    # -- reading and retention ------------------------------------------------------------

    async def spans_of(self, request_id: str) -> list[dict[str, Any]]:
        return await asyncio.to_thread(spans_of_request, self._database, request_id)

    async def sweep(self) -> int:
        """Delete the spans older than `retention_days`; returns how many went."""
        cutoff = datetime.now(UTC) - timedelta(days=self.config.retention_days)
        return await asyncio.to_thread(delete_spans_before, self._database, cutoff)

    async def _sweep_periodically(self) -> None:
        while True:
            try:
                deleted = await self.sweep()
                if deleted:
                    log.info(
                        "deleted %d spans older than %g days", deleted, self.config.retention_days
                    )
            except Exception as exc:
                log.warning("deleting old spans failed (%s); will retry", type(exc).__name__)
            await asyncio.sleep(self.config.sweep_interval_s)

    # -- in the writer's thread -----------------------------------------------------------

    def _build(self, item: PendingTrace) -> SpanTree:
        if item.tree is not None:
            tree = item.tree
        else:
            assert item.call is not None and item.record is not None
            tree = call_spans(
                item.call,
                item.record,
                mask=self._mask,
                capture_content=self.config.capture_content,
            )
        # Error messages can quote a prompt back: they are stored and exported masked.
        for span in tree.spans:
            if span.status_message:
                span.status_message = self._mask(span.status_message)
        return tree


def build_tracing(
    settings: Settings, database: Database, mask: Callable[[str], str]
) -> Tracing | None:
    """The tracing part the settings ask for; None when spans are neither kept nor exported."""
    config = settings.tracing
    if not config.enabled and config.otlp.endpoint is None:
        return None
    # A collector's API key must never show up in a log line or an error.
    secrets.register([value.get_secret_value() for value in config.otlp.headers.values()])
    return Tracing(
        config,
        database,
        mask=mask,
        batch_size=settings.server.record_batch_size,
        flush_interval_s=settings.server.record_flush_interval_s,
    )
