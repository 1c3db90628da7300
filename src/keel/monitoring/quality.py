"""Quality from labelled feedback: accuracy, and precision, recall and F1 per class and
macro-averaged, per model, registry version and deployment over a window of time.

Everything is read from the hourly aggregates (`feedback_quality`), never from the feedback
rows: a window sums a few thousand cells however much feedback there is. Windows therefore
have hour resolution: a window covers the hour buckets from the one holding `end - window`
to the one holding `end`, by the time the requests were served.

Thumbs are binary correctness (up is correct); a label is correct when it equals the expected
value. `accuracy` counts both; precision, recall and F1 need classes, so they come from
labelled feedback alone and are None where there is none. A class no item was predicted as
(or none truly was) has precision (recall) 0, as scikit-learn reports it by default.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import func, select

from keel.monitoring.feedback import hour_of
from keel.monitoring.feedback_tables import feedback_quality
from keel.store import Database

__all__ = [
    "GROUPINGS",
    "MAX_WINDOW_S",
    "Grouping",
    "parse_window",
    "quality_report",
    "quality_summary",
    "summarize",
]

Grouping = Literal["registry_version", "deployment"]
GROUPINGS: tuple[Grouping, ...] = ("registry_version", "deployment")
MAX_WINDOW_S = 400 * 24 * 3600.0
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_WINDOW = re.compile(r"(\d{1,9}(?:\.\d{1,6})?)([smhdw])")

# (expected, predicted, correct, count); expected and predicted are "" for thumbs.
Cell = tuple[str, str, bool, int]


def parse_window(text: str) -> float:
    """`30m`, `24h`, `7d`, `2w` or `3600s` in seconds; ValueError saying what is accepted."""
    match = _WINDOW.fullmatch(text.strip())
    seconds = float(match.group(1)) * _UNITS[match.group(2)] if match else 0.0
    if not match or seconds <= 0:
        raise ValueError(
            f"{text[:40]!r} is not a window; write a number and a unit: 30m, 24h, 7d, 2w"
        )
    if seconds > MAX_WINDOW_S:
        raise ValueError(f"{text[:40]!r} is longer than the longest window, 400d")
    return seconds


def quality_summary(
    database: Database,
    *,
    model: str,
    window_s: float,
    registry_version: str | None = None,
    end: datetime | None = None,
) -> dict[str, Any]:
    """Quality of `model` (optionally one registry version, `name@3`) over the `window_s`
    seconds up to `end` (now by default): `count`, `accuracy`, `precision_macro`,
    `recall_macro`, `f1_macro`, `per_class` ({label: precision, recall, f1, support}) and
    more (see `summarize`). Synchronous: call it from a worker thread."""
    report = quality_report(
        database, model=model, window_s=window_s, registry_version=registry_version, end=end
    )
    summary: dict[str, Any] = report["overall"]
    return summary


def quality_report(
    database: Database,
    *,
    model: str,
    window_s: float,
    end: datetime | None = None,
    by: Grouping | None = None,
    registry_version: str | None = None,
    deployment: str | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """The quality of `model` over the window, overall and, with `by`, per registry version
    or per deployment."""
    finish = _utc(end or datetime.now(UTC))
    start = hour_of(finish - timedelta(seconds=window_s))
    table = feedback_quality.c
    group_column = table[by] if by is not None else None
    columns = [table.expected, table.predicted, table.correct, func.sum(table.count)]
    query = select(*columns, *([group_column] if group_column is not None else [])).where(
        table.model == model, table.bucket >= start, table.bucket <= finish
    )
    for column, value in (
        (table.registry_version, registry_version),
        (table.deployment, deployment),
        (table.source, source),
    ):
        if value is not None:
            query = query.where(column == value)
    query = query.group_by(
        table.expected,
        table.predicted,
        table.correct,
        *([group_column] if group_column is not None else []),
    )
    with database.engine.connect() as connection:
        rows = connection.execute(query).all()
    groups: dict[str, list[Cell]] = {}
    overall: list[Cell] = []
    for row in rows:
        cell: Cell = (row[0], row[1], bool(row[2]), int(row[3] or 0))
        overall.append(cell)
        if by is not None:
            groups.setdefault(row[4], []).append(cell)
    report: dict[str, Any] = {
        "object": "quality",
        "model": model,
        "window_s": window_s,
        "start": start.isoformat(),
        "end": finish.isoformat(),
        "by": by,
        "overall": summarize(overall),
    }
    if by is not None:
        report["groups"] = [
            # The empty key holds feedback on requests that had no version (or deployment).
            {by: key or None, **summarize(cells)}
            for key, cells in sorted(groups.items())
        ]
    return report


def summarize(cells: Iterable[Cell]) -> dict[str, Any]:
    """Accuracy over every verdict; per-class and macro precision, recall and F1 over the
    labelled ones, with the confusion matrix they come from ({expected: {predicted: n}})."""
    total = correct = 0
    confusion: dict[str, dict[str, int]] = {}
    for expected, predicted, is_correct, count in cells:
        if count <= 0:
            continue  # a cell emptied by replaced feedback
        total += count
        correct += count if is_correct else 0
        if expected:
            row = confusion.setdefault(expected, {})
            row[predicted] = row.get(predicted, 0) + count
    classes = sorted(set(confusion) | {label for row in confusion.values() for label in row})
    per_class: dict[str, dict[str, float | int]] = {}
    for label in classes:
        hits = confusion.get(label, {}).get(label, 0)
        predicted_as = sum(row.get(label, 0) for row in confusion.values())
        support = sum(confusion.get(label, {}).values())
        precision = hits / predicted_as if predicted_as else 0.0
        recall = hits / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": support,
        }

    def macro(metric: str) -> float | None:
        if not per_class:
            return None
        return sum(float(scores[metric]) for scores in per_class.values()) / len(per_class)

    return {
        "count": total,
        "correct": correct,
        "accuracy": correct / total if total else None,
        "labelled": sum(sum(row.values()) for row in confusion.values()),
        "precision_macro": macro("precision"),
        "recall_macro": macro("recall"),
        "f1_macro": macro("f1"),
        "per_class": per_class,
        "confusion": confusion,
    }


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
