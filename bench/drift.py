"""Drift over a busy window: how long one drift report takes to compute.

Synthetic traffic is inserted straight into a fresh database: `--records` request records in
the current window and as many in the reference window (token lengths, statuses, PII
decisions), each with a captured payload carrying 384-float input and output vectors (the
size of all-MiniLM-L6-v2's), the current window's shifted. Then the report (every check:
PSI, KS, rates, MMD with 200 permutations on the sampled vectors, mean distance) is computed
`--runs` times and the median printed.

    python bench/drift.py                       # 100,000 records a window, SQLite
    python bench/drift.py --records 20000 --runs 3
    python bench/drift.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import insert

from keel.config import Settings
from keel.monitoring.drift import DriftMonitor
from keel.monitoring.payload_tables import request_payloads
from keel.registry import Registry
from keel.store import Database
from keel.store.schema import request_records

MODEL = "bench-model"
DIMENSIONS = 384
CHUNK = 5000


def _rows(
    rng: np.random.Generator, count: int, start: datetime, span: timedelta, shift: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    offsets = np.sort(rng.uniform(0, span.total_seconds(), count))
    prompt = rng.poisson(60 + 30 * shift, count)
    completion = rng.poisson(120, count)
    errors = rng.random(count) < 0.02
    pii = rng.random(count) < 0.05
    direction = np.zeros(DIMENSIONS, dtype=np.float32)
    direction[0] = shift
    records, payloads = [], []
    for index in range(count):
        request_id = f"req_{uuid.uuid4().hex}"
        created = start + timedelta(seconds=float(offsets[index]))
        decisions = (
            [
                {
                    "stage": "input",
                    "rule": "pii",
                    "kind": "pii",
                    "action": "mask",
                    "findings": {"EMAIL_ADDRESS": 1},
                    "enforced": True,
                }
            ]
            if pii[index]
            else None
        )
        records.append(
            {
                "id": request_id,
                "created_at": created,
                "endpoint": "chat",
                "model_requested": MODEL,
                "stream": False,
                "status_code": 502 if errors[index] else 200,
                "latency_ms": 100.0,
                "prompt_tokens": int(prompt[index]),
                "completion_tokens": int(completion[index]),
                "attempts": 1,
                "guardrails": decisions,
            }
        )
        vectors = rng.normal(0, 1, (2, DIMENSIONS)).astype(np.float32) + direction
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        payloads.append(
            {
                "request_id": request_id,
                "created_at": created,
                "model": MODEL,
                "input_text": "synthetic prompt",
                "output_text": "synthetic answer",
                "input_embedding": vectors[0].astype("<f4").tobytes(),
                "output_embedding": vectors[1].astype("<f4").tobytes(),
                "finish_reason": "stop",
            }
        )
    return records, payloads


def _fill(database: Database, records: int, now: datetime) -> None:
    rng = np.random.default_rng(0)
    day = timedelta(hours=24)
    for start, shift in ((now - 2 * day, 0.0), (now - day, 0.3)):
        for offset in range(0, records, CHUNK):
            count = min(CHUNK, records - offset)
            part = day * (count / records)
            rows, payloads = _rows(rng, count, start + day * (offset / records), part, shift)
            with database.engine.begin() as conn:
                conn.execute(insert(request_records), rows)
                conn.execute(insert(request_payloads), payloads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000, help="records per window")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        url = args.database_url or f"sqlite:///{Path(home) / 'bench.db'}"
        database = Database(url)
        database.migrate()
        now = datetime.now(UTC).replace(microsecond=0)
        began = time.perf_counter()
        _fill(database, args.records, now)
        print(
            f"inserted {2 * args.records:,} records and payloads in "
            f"{time.perf_counter() - began:.1f} s ({database.backend})"
        )
        monitor = DriftMonitor(database, Registry(database), Settings().drift)
        timings = []
        report: dict[str, Any] = {}
        for _ in range(args.runs):
            began = time.perf_counter()
            report = monitor.compute(MODEL, window="24h", until=now)
            timings.append(time.perf_counter() - began)
        database.dispose()
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    print(
        f"current window: {report['current_count']:,} records, reference: "
        f"{report['reference_count']:,}; drifted: {report['drifted']}"
    )
    print(
        f"drift report over {report['current_count'] + report['reference_count']:,} records: "
        f"median {statistics.median(timings):.2f} s, min {min(timings):.2f} s, "
        f"max {max(timings):.2f} s ({args.runs} runs)"
    )


if __name__ == "__main__":
    main()
