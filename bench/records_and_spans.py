"""Sustained rate of request records plus kept spans, into SQLite and PostgreSQL.

Runs Keel's services in this process (no HTTP: one process of the gateway tops out far below
the writers) and offers `--rate` calls per second for `--seconds`: each call is one request
record (the columns a real call fills) through the request recorder and one span tree (the
call, guardrails, cache lookup, one upstream attempt) through the trace writer, both batched
off the request path as the gateway hands them over. It then waits until everything is stored
and prints, per database, the calls offered, rows stored, the sustained rate from the first
hand-over to the last row stored, and how many records or spans were dropped (must be 0).

    python bench/records_and_spans.py                       # 5,000 calls/s for 10 s, both DBs
    python bench/records_and_spans.py --rate 8000 --no-postgres
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from keel.config import Settings
from keel.monitoring.spans import SpanTree
from keel.server import create_app
from keel.store.schema import request_records

POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TICK_S = 0.01


def record(request_id: str) -> dict[str, Any]:
    return {
        "id": request_id,
        "created_at": datetime.now(UTC),
        "endpoint": "chat.completions",
        "model_requested": "gpt-4o-mini",
        "provider": "openai",
        "deployment": "openai-primary",
        "upstream_model": "gpt-4o-mini-2024-07-18",
        "stream": False,
        "status_code": 200,
        "error_type": None,
        "error_message": None,
        "latency_ms": 412.5,
        "ttft_ms": None,
        "overhead_ms": 0.9,
        "prompt_tokens": 812,
        "completion_tokens": 164,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cost_usd": 0.0002202,
        "caller": "search-assistant",
        "team": "ml",
        "key_id": "key_0123456789abcdef",
        "environment": "production",
        "guardrails": [{"stage": "input", "rule": "pii", "action": "mask", "findings": 1}],
        "attempts": 1,
        "cache": "miss",
        "registry_version": "search-assistant@3",
    }


def span_tree(request_id: str) -> SpanTree:
    start = time.time_ns()
    tree = SpanTree(
        "chat gpt-4o-mini",
        start_ns=start,
        kind="server",
        request_id=request_id,
        attributes={"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini"},
    )
    tree.add("keel.guardrails.input", start_ns=start + 10_000, end_ns=start + 60_000)
    tree.add("keel.cache.lookup", start_ns=start + 70_000, end_ns=start + 90_000)
    tree.add(
        "chat gpt-4o-mini-2024-07-18",
        start_ns=start + 100_000,
        end_ns=start + 412_000_000,
        kind="client",
        attributes={"gen_ai.usage.input_tokens": 812, "gen_ai.usage.output_tokens": 164},
    )
    return tree.finish(end_ns=start + 412_500_000)


async def offer(settings: Settings, rate: int, seconds: float) -> dict[str, Any]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        keel = app.state.keel
        per_tick = max(1, round(rate * TICK_S))
        offered = 0
        started = time.perf_counter()
        deadline = started + seconds
        next_tick = started
        while time.perf_counter() < deadline:
            for _ in range(per_tick):
                request_id = f"req_{uuid.uuid4().hex}"
                keel.recorder.add(record(request_id))
                keel.tracing.emit(span_tree(request_id))
                offered += 1
            next_tick += TICK_S
            await asyncio.sleep(max(0.0, next_tick - time.perf_counter()))
        offering_s = time.perf_counter() - started
        await keel.recorder.flush()
        await keel.tracing.flush()
        stored_s = time.perf_counter() - started
        with keel.database.engine.connect() as connection:
            records = connection.execute(select(func.count()).select_from(request_records))
            record_rows = int(records.scalar_one())
            spans = int(connection.execute(text("SELECT COUNT(*) FROM spans")).scalar_one())
        return {
            "offered": offered,
            "offered_rate": offered / offering_s,
            "records": record_rows,
            "spans": spans,
            "sustained": record_rows / stored_s,
            "dropped": keel.recorder.dropped + keel.tracing.dropped,
        }


def settings_for(home: Path, database_url: str | None) -> Settings:
    values: dict[str, Any] = {
        "home": str(home),
        "local_models": {"chat": False, "embeddings": False},
        "metrics": {"enabled": False},
    }
    if database_url is not None:
        values["database_url"] = database_url
    return Settings.model_validate(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=5_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    results: list[tuple[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="keel-bench-") as tmp:
        results.append(
            ("sqlite", asyncio.run(offer(settings_for(Path(tmp), None), args.rate, args.seconds)))
        )
    if not args.no_postgres:
        name = f"keel_bench_{uuid.uuid4().hex[:10]}"
        admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(False)
        try:
            with tempfile.TemporaryDirectory(prefix="keel-bench-") as tmp:
                settings = settings_for(Path(tmp), url)
                figures = asyncio.run(offer(settings, args.rate, args.seconds))
                results.append(("postgresql", figures))
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    print(f"records + spans offered at {args.rate}/s for {args.seconds:g} s")
    for backend, figures in results:
        print(
            f"  {backend:<10} offered {figures['offered']} ({figures['offered_rate']:.0f}/s), "
            f"stored {figures['records']} records and {figures['spans']} spans, "
            f"sustained {figures['sustained']:.0f} calls/s, dropped {figures['dropped']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
