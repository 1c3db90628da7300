"""The tracking store's row-level helpers: reading runs with their params, tags and metric
summaries, and writing metric points by each driver's fastest path. Every function takes the
caller's connection, so a store method stays one transaction."""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, func, insert, select

from keel.tracking import tables as t

__all__ = ["differ", "insert_points", "iso", "run_rows", "utc"]

_RUNS, _EXPERIMENTS = t.tracking_runs.c, t.tracking_experiments.c
_METRICS, _PARAMS, _TAGS = t.tracking_metrics.c, t.tracking_params.c, t.tracking_tags.c


def utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso(value: datetime | None) -> str | None:
    moment = utc(value)
    return moment.isoformat() if moment is not None else None


def run_rows(conn: Connection, conditions: list[Any], *, limit: int) -> list[dict[str, Any]]:
    query = (
        select(t.tracking_runs, _EXPERIMENTS.name.label("experiment"))
        .join(t.tracking_experiments, _EXPERIMENTS.id == _RUNS.experiment_id)
        .where(*conditions)
        .order_by(_RUNS.started_at.desc(), _RUNS.id)
        .limit(limit)
    )
    rows = conn.execute(query).all()
    ids = [row.id for row in rows]
    if not ids:
        return []
    params: dict[str, dict[str, Any]] = {run_id: {} for run_id in ids}
    for row in conn.execute(select(t.tracking_params).where(_PARAMS.run_id.in_(ids))):
        params[row.run_id][row.key] = json.loads(row.value)
    tags: dict[str, dict[str, str]] = {run_id: {} for run_id in ids}
    for row in conn.execute(select(t.tracking_tags).where(_TAGS.run_id.in_(ids))):
        tags[row.run_id][row.key] = row.value
    metrics = _metric_summaries(conn, ids)
    return [
        {
            "id": row.id,
            "experiment": row.experiment,
            "name": row.name,
            "status": row.status,
            "error": row.error,
            "created_by": row.created_by,
            "key_id": row.key_id,
            "environment": row.environment,
            "team": row.team,
            "started_at": iso(row.started_at),
            "ended_at": iso(row.ended_at),
            "heartbeat_at": iso(row.heartbeat_at),
            "git_commit": row.git_commit,
            "git_dirty": row.git_dirty,
            "python_version": row.python_version,
            "packages_digest": row.packages_digest,
            "host": row.host,
            "params": dict(sorted(params[row.id].items())),
            "tags": dict(sorted(tags[row.id].items())),
            "metrics": metrics.get(row.id, {}),
        }
        for row in rows
    ]


def _metric_summaries(conn: Connection, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Per run and key: the latest value (highest step, then latest logged), min, max and
    how many points."""
    stats = conn.execute(
        select(
            _METRICS.run_id,
            _METRICS.key,
            func.count().label("points"),
            func.min(_METRICS.value).label("min"),
            func.max(_METRICS.value).label("max"),
            func.max(_METRICS.step).label("step"),
        )
        .where(_METRICS.run_id.in_(ids))
        .group_by(_METRICS.run_id, _METRICS.key)
    ).all()
    summaries: dict[str, dict[str, Any]] = {}
    for row in stats:
        last = conn.execute(
            select(_METRICS.value)
            .where(
                _METRICS.run_id == row.run_id,
                _METRICS.key == row.key,
                _METRICS.step == row.step,
            )
            .order_by(_METRICS.id.desc())
            .limit(1)
        ).scalar()
        summaries.setdefault(row.run_id, {})[row.key] = {
            "last": last,
            "step": int(row.step),
            "min": row.min,
            "max": row.max,
            "count": int(row.points),
        }
    return {run_id: dict(sorted(found.items())) for run_id, found in summaries.items()}


_POINT_COLUMNS = "run_id, key, value, step, timestamp_ms"


def insert_points(conn: Connection, rows: list[tuple[str, str, float, int, int]]) -> None:
    """Metric points by the driver's fastest path: COPY on PostgreSQL, one INSERT ... SELECT
    over a JSON array on SQLite (several times SQLAlchemy's per-row dicts; see
    bench/tracking_throughput.py)."""
    if conn.dialect.name == "postgresql":
        driver = conn.connection.driver_connection
        assert driver is not None
        with (
            driver.cursor() as cursor,
            cursor.copy(f"COPY tracking_metrics ({_POINT_COLUMNS}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)
    elif conn.dialect.name == "sqlite" and sqlite3.sqlite_version_info >= (3, 38):
        # One statement over one JSON array: SQLite reads the points in C, and the caller's
        # thread gets the GIL back for the whole write instead of once per row.
        conn.exec_driver_sql(
            f"INSERT INTO tracking_metrics ({_POINT_COLUMNS}) SELECT value->>0, value->>1, "
            "value->>2, value->>3, value->>4 FROM json_each(?)",
            (orjson.dumps(rows).decode(),),
        )
    elif conn.dialect.name == "sqlite":
        conn.exec_driver_sql(
            f"INSERT INTO tracking_metrics ({_POINT_COLUMNS}) VALUES (?, ?, ?, ?, ?)", rows
        )
    else:
        names = _POINT_COLUMNS.split(", ")
        conn.execute(
            insert(t.tracking_metrics), [dict(zip(names, row, strict=True)) for row in rows]
        )


def differ(values: Iterable[Any]) -> bool:
    seen: list[Any] = []
    for value in values:
        if isinstance(value, float) and math.isnan(value):
            value = "nan"
        if value not in seen:
            seen.append(value)
    return len(seen) > 1
