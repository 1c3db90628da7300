"""Quality as Prometheus gauges, per model, registry version and deployment.

A scrape never queries the database: `collect` reads a snapshot that a background task
refreshes from the hourly aggregates every `refresh_interval_s` (one grouped query over the
window for every model at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from keel.monitoring.feedback import hour_of
from keel.monitoring.feedback_tables import feedback_quality
from keel.monitoring.quality import Cell, summarize
from keel.store import Database

__all__ = ["GAUGE_WINDOW_S", "REFRESH_INTERVAL_S", "QualityGauges"]

log = logging.getLogger("keel.monitoring")

# A day smooths out the hours with little feedback; alerts on shorter windows read
# `quality_summary` themselves.
GAUGE_WINDOW_S = 24 * 3600.0
REFRESH_INTERVAL_S = 30.0
_LABELS = ("model", "registry_version", "deployment")
_GAUGES = {
    "accuracy": "Share of feedback verdicts that were correct (thumbs up, or label == expected)",
    "precision_macro": "Macro-averaged precision over the labelled classes",
    "recall_macro": "Macro-averaged recall over the labelled classes",
    "f1_macro": "Macro-averaged F1 over the labelled classes",
}

Labels = tuple[str, str, str]


class QualityGauges(Collector):
    """`keel_quality_*` gauges over the last `window_s` seconds of requests."""

    def __init__(
        self,
        database: Database,
        *,
        window_s: float = GAUGE_WINDOW_S,
        refresh_interval_s: float = REFRESH_INTERVAL_S,
    ) -> None:
        self._database = database
        self._window_s = window_s
        self._refresh_interval_s = refresh_interval_s
        self._snapshot: dict[Labels, dict[str, Any]] = {}
        self._task: asyncio.Task[None] | None = None
        self.refreshed_at: datetime | None = None

    def refresh(self, now: datetime | None = None) -> None:
        """Recompute the snapshot (synchronous: a worker thread's job)."""
        end = now or datetime.now(UTC)
        table = feedback_quality.c
        query = (
            select(
                table.model,
                table.registry_version,
                table.deployment,
                table.expected,
                table.predicted,
                table.correct,
                func.sum(table.count),
            )
            .where(table.bucket >= hour_of(end - timedelta(seconds=self._window_s)))
            .where(table.bucket <= end)
            .group_by(
                table.model,
                table.registry_version,
                table.deployment,
                table.expected,
                table.predicted,
                table.correct,
            )
        )
        with self._database.engine.connect() as connection:
            rows = connection.execute(query).all()
        cells: dict[Labels, list[Cell]] = {}
        for model, version, deployment, expected, predicted, correct, count in rows:
            cell: Cell = (expected, predicted, bool(correct), int(count or 0))
            cells.setdefault((model, version, deployment), []).append(cell)
        snapshot = {labels: summarize(found) for labels, found in cells.items()}
        # Swapped whole: a scrape sees the old snapshot or the new one, never half of each.
        self._snapshot = {labels: found for labels, found in snapshot.items() if found["count"]}
        self.refreshed_at = end

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="keel-quality-gauges")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.refresh)
            except Exception as exc:
                # The last snapshot stays; the next round tries again.
                log.warning("refreshing the quality gauges failed (%s)", type(exc).__name__)
            await asyncio.sleep(self._refresh_interval_s)

    def describe(self) -> list[GaugeMetricFamily]:
        # Registering asks for the names only: no database read at start-up.
        return [*self._families().values(), self._count_family()]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = self._families()
        count = self._count_family()
        for labels, summary in sorted(self._snapshot.items()):
            label_values = list(labels)
            for metric, family in families.items():
                value = summary[metric]
                if value is not None:
                    family.add_metric(label_values, float(value))
            count.add_metric(label_values, float(summary["count"]))
        yield from families.values()
        yield count

    def _families(self) -> dict[str, GaugeMetricFamily]:
        return {
            metric: GaugeMetricFamily(
                f"keel_quality_{metric}", f"{text} (last {self._window_label()})", labels=_LABELS
            )
            for metric, text in _GAUGES.items()
        }

    def _count_family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "keel_quality_feedback_count",
            f"Feedback verdicts the quality gauges are computed from (last {self._window_label()})",
            labels=_LABELS,
        )

    def _window_label(self) -> str:
        hours = self._window_s / 3600
        return f"{hours:g}h"
