"""The numbers alert rules compare: one value per window, read from what every replica shares.

Prometheus metrics are per replica, so rules never read them: request series come from
`request_records`, quality from `keel.monitoring.quality`, drift from `keel.monitoring.drift`.
Everything here is synchronous and runs in a worker thread, never on the request path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, select

from keel.monitoring.alerts_config import METRICS, AlertRuleConfig
from keel.store import Database, request_records

__all__ = ["nearest_rank", "series_values", "utc"]

_RECORDS = request_records.c
Values = list[float | None]


def utc(moment: datetime) -> datetime:
    """SQLite gives back naive times; Keel stores UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def nearest_rank(values: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile: the smallest value with at least `fraction` of the values
    at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(math.ceil(fraction * len(ordered)), 1)
    return ordered[rank - 1]


def series_values(
    database: Database, rule: AlertRuleConfig, *, end: datetime, windows: int
) -> Values:
    """`windows` consecutive values of the rule's metric, oldest first, the last one ending at
    `end`. None where a window holds nothing to compute it from (no requests for a rate)."""
    source = METRICS[rule.metric].source if rule.metric in METRICS else "drift"
    if source == "requests":
        return _request_series(database, rule, utc(end), windows)
    if source == "quality":
        return _quality_series(database, rule, utc(end), windows)
    return [_drift_value(database, rule)]


# -- request records -------------------------------------------------------------------------

_QUOTA_PREFIX = "quota exceeded:"


def _count_where(condition: Any) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


_ERRORS = and_(_RECORDS.status_code >= 400, _RECORDS.status_code != 499)
# A quota refusal is Keel's own 429, recognised by its message: an upstream's 429 that reached
# the client reads differently.
_QUOTA = and_(_RECORDS.status_code == 429, _RECORDS.error_message.like(f"{_QUOTA_PREFIX}%"))
# What each aggregate metric needs from a window, computed by the database.
_AGGREGATES: dict[str, list[Any]] = {
    "request_count": [func.count()],
    "error_count": [_count_where(_ERRORS)],
    "error_rate": [_count_where(_ERRORS), func.count()],
    "server_error_rate": [_count_where(_RECORDS.status_code >= 500), func.count()],
    "cost_usd": [func.coalesce(func.sum(_RECORDS.cost_usd), 0)],
    "input_tokens": [func.coalesce(func.sum(_RECORDS.prompt_tokens), 0)],
    "output_tokens": [func.coalesce(func.sum(_RECORDS.completion_tokens), 0)],
    "total_tokens": [
        func.coalesce(func.sum(_RECORDS.prompt_tokens), 0)
        + func.coalesce(func.sum(_RECORDS.completion_tokens), 0)
    ],
    "cache_hit_rate": [
        _count_where(_RECORDS.cache == "hit"),
        _count_where(_RECORDS.cache == "miss"),
    ],
    "quota_rejections": [_count_where(_QUOTA)],
}
_PERCENTILES = {
    "latency_p50_seconds": (_RECORDS.latency_ms, 0.50),
    "latency_p95_seconds": (_RECORDS.latency_ms, 0.95),
    "latency_p99_seconds": (_RECORDS.latency_ms, 0.99),
    "ttft_p95_seconds": (_RECORDS.ttft_ms, 0.95),
}


def _ratio(part: Any, whole: Any) -> float | None:
    return float(part) / float(whole) if whole else None


def _aggregate_value(metric: str, row: Sequence[Any]) -> float | None:
    if metric in ("error_rate", "server_error_rate"):
        return _ratio(row[0], row[1])
    if metric == "cache_hit_rate":
        return _ratio(row[0], int(row[0]) + int(row[1]))
    return float(row[0])


def _request_series(database: Database, rule: AlertRuleConfig, end: datetime, n: int) -> Values:
    """One query per window, each on the created_at index: sums and counts are computed by
    the database; percentiles read the one column they rank."""
    width = timedelta(seconds=rule.window)
    filters = [
        column == wanted
        for column, wanted in (
            (_RECORDS.model_requested, rule.model),
            (_RECORDS.deployment, rule.deployment),
            (_RECORDS.team, rule.team),
            (_RECORDS.environment, rule.environment),
        )
        if wanted is not None
    ]
    values: Values = []
    with database.engine.connect() as connection:
        for back in range(n - 1, -1, -1):
            window_end = end - width * back
            scope = and_(
                _RECORDS.created_at >= window_end - width,
                _RECORDS.created_at < window_end,
                *filters,
            )
            if rule.metric in _PERCENTILES:
                column, fraction = _PERCENTILES[rule.metric]
                query = select(column).where(scope, column.is_not(None))
                ranked = nearest_rank([float(v) for v in connection.scalars(query)], fraction)
                values.append(None if ranked is None else ranked / 1000)
            else:
                query = select(*_AGGREGATES[rule.metric]).where(scope)
                values.append(_aggregate_value(rule.metric, connection.execute(query).one()))
    return values


# -- quality and drift -----------------------------------------------------------------------

_QUALITY_FIELDS = {
    "quality_count": "count",
    "quality_accuracy": "accuracy",
    "quality_precision_macro": "precision_macro",
    "quality_recall_macro": "recall_macro",
    "quality_f1_macro": "f1_macro",
}


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _quality_series(database: Database, rule: AlertRuleConfig, end: datetime, n: int) -> Values:
    from keel.monitoring.quality import quality_summary

    assert rule.model is not None  # the rule's validation requires it
    field = _QUALITY_FIELDS[rule.metric]
    values: Values = []
    for back in range(n - 1, -1, -1):
        summary = quality_summary(
            database,
            model=rule.model,
            window_s=rule.window,
            end=end - timedelta(seconds=rule.window * back),
        )
        empty = not summary.get("count")
        values.append(None if empty and field != "count" else _number(summary.get(field)))
    return values


def _drift_value(database: Database, rule: AlertRuleConfig) -> float | None:
    from keel.monitoring.drift import latest_drift

    assert rule.model is not None
    latest = latest_drift(database, model=rule.model)
    if latest is None:
        return None
    if rule.metric == "drift_detected":
        return 1.0 if latest.get("drifted") else 0.0
    return _number(latest.get(rule.metric.removeprefix("drift.")))
