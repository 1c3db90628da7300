"""Quality over a million feedback rows: how long a quality query takes from the hourly
aggregates, on SQLite and PostgreSQL.

`--rows` pieces of feedback (1,000,000 by default) go through the bulk path of the feedback
store (`FeedbackStore.record_many`, the same aggregation code as a single POST) in chunks of
`--chunk`: one model, two registry versions, two deployments, spread over the last 7 days;
80% carry a label with its expected value (4 classes, about 70% right), the rest thumbs. Then
the quality of the model is computed `--runs` times over the whole 7 days, over the last 24
hours, and over 7 days per registry version, and the medians printed.

    python bench/quality_aggregates.py                       # both databases, ~5 min on 2 cores
    python bench/quality_aggregates.py --rows 100000 --runs 5
    python bench/quality_aggregates.py --no-postgres
    python bench/quality_aggregates.py --postgres-url postgresql+psycopg://postgres@db:5432/x

PostgreSQL runs in a fresh database created next to the one `--postgres-url` names (dropped
afterwards); SQLite in a temporary file.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from keel.monitoring.feedback import Feedback, FeedbackStore, RequestFacts
from keel.monitoring.feedback_tables import feedback_quality
from keel.monitoring.quality import quality_report
from keel.store import Database

MODEL = "bench-model"
CLASSES = ("billing", "bug", "feature", "other")
VERSIONS = ("bench-model@1", "bench-model@2")
DEPLOYMENTS = ("east", "west")
SPAN = timedelta(days=7)
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _feedback(count: int, end: datetime, seed: int) -> Iterator[tuple[RequestFacts, Feedback]]:
    chooser = random.Random(seed)
    for index in range(count):
        at = end - timedelta(seconds=chooser.uniform(0, SPAN.total_seconds()))
        facts = RequestFacts(
            request_id=f"req_{seed}_{index}",
            requested_at=at,
            model=MODEL,
            registry_version=chooser.choice(VERSIONS),
            deployment=chooser.choice(DEPLOYMENTS),
        )
        if chooser.random() < 0.8:
            expected = chooser.choice(CLASSES)
            label = expected if chooser.random() < 0.7 else chooser.choice(CLASSES)
            item = Feedback(source="code", name="triage", label=label, expected=expected)
        else:
            item = Feedback(thumbs="up" if chooser.random() < 0.75 else "down")
        yield facts, item


def _fill(database: Database, rows: int, chunk: int, end: datetime) -> float:
    store = FeedbackStore(database)
    pending: list[tuple[RequestFacts, Feedback]] = []
    started = time.perf_counter()
    for pair in _feedback(rows, end, seed=11):
        pending.append(pair)
        if len(pending) == chunk:
            store.record_many(pending, by="bench")
            pending = []
    if pending:
        store.record_many(pending, by="bench")
    return time.perf_counter() - started


def _median_ms(runs: int, query: Callable[[], Any]) -> tuple[float, Any]:
    query()  # warm the caches and the pool
    timings = []
    result = None
    for _ in range(runs):
        started = time.perf_counter()
        result = query()
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings), result


def _measure(label: str, url: str, args: argparse.Namespace) -> list[str]:
    database = Database(url)
    database.migrate()
    end = datetime.now(UTC)
    try:
        seconds = _fill(database, args.rows, args.chunk, end)
        with database.engine.connect() as connection:
            aggregates = connection.execute(select(func.count()).select_from(feedback_quality))
            cells = int(aggregates.scalar_one())
        lines = [
            f"{label}: {args.rows:,} feedback rows in {seconds:.1f} s "
            f"({args.rows / seconds:,.0f} rows/s), {cells:,} aggregate rows",
        ]
        for name, window_s, by in (
            ("7 days", SPAN.total_seconds(), None),
            ("24 hours", 86400.0, None),
            ("7 days by registry_version", SPAN.total_seconds(), "registry_version"),
        ):
            median, report = _median_ms(
                args.runs,
                lambda w=window_s, b=by: quality_report(
                    database, model=MODEL, window_s=w, end=end, by=b
                ),
            )
            overall = report["overall"]
            lines.append(
                f"  quality over {name}: median {median:.1f} ms "
                f"({overall['count']:,} verdicts, accuracy {overall['accuracy']:.3f}, "
                f"F1 macro {overall['f1_macro']:.3f})"
            )
        return lines
    finally:
        database.dispose()


@contextmanager
def _fresh_postgres(admin_url: str) -> Iterator[str]:
    name = f"keel_bench_quality_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite:///{Path(directory) / 'bench.db'}"
        for line in _measure("SQLite", url, args):
            print(line, flush=True)
    if not args.no_postgres:
        with _fresh_postgres(args.postgres_url) as url:
            for line in _measure("PostgreSQL", url, args):
                print(line, flush=True)


if __name__ == "__main__":
    main()
