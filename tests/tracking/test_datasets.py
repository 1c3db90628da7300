"""Versioned datasets: the store on SQLite and PostgreSQL, file formats, splits, digests, and
rows drawn from production traffic."""

from __future__ import annotations

import csv
import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from keel.errors import InvalidRequestError, NotFoundError
from keel.store import Database
from keel.tracking.datasets import DatasetStore
from tests.tracking.library_helpers import library_database

__all__ = ["library_database"]

ROWS = [
    {"question": "Capital of France?", "answer": "Paris"},
    {"question": "Capital of Peru?", "answer": "Lima"},
    {"question": "2 + 2?", "answer": "4"},
]


def digest_by_hand(splits: dict[str, list[dict[str, Any]]]) -> str:
    # The documented canonical form: {"splits": {name: rows}}, sorted keys, no spaces, UTF-8.
    text = json.dumps({"splits": splits}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def test_versions_are_numbered_and_content_addressed(library_database: Database) -> None:
    store = DatasetStore(library_database)
    first = store.add_rows("capitals", ROWS)
    assert (first.version, first.created) == (1, True)
    assert first.digest == digest_by_hand({"default": ROWS})
    assert first.splits == {"default": 3}
    assert first.columns == ["question", "answer"]
    again = store.add_rows("capitals", [dict(row) for row in ROWS])
    assert (again.version, again.created, again.digest) == (1, False, first.digest)
    second = store.add_rows(
        "capitals", [*ROWS, {"question": "Capital of Chad?", "answer": "N'Djamena"}]
    )
    assert second.version == 2
    assert store.get("capitals").version == 2
    assert store.get("capitals@latest").version == 2
    assert store.get("capitals@1").rows() == ROWS
    assert [s.name for s in store.list()] == ["capitals"]
    assert store.list()[0].latest_version == 2


def test_named_splits_by_rows_and_by_fraction(library_database: Database) -> None:
    store = DatasetStore(library_database)
    explicit = store.add_rows("qa", {"train": ROWS[:2], "test": ROWS[2:]})
    assert explicit.splits == {"train": 2, "test": 1}
    assert explicit.rows("test") == ROWS[2:]
    assert explicit.rows() == ROWS  # every split, in the order given
    many = [{"n": n} for n in range(10)]
    split = store.add_rows("numbers", many, splits={"train": 0.7, "test": 0.3})
    assert split.splits == {"train": 7, "test": 3}
    train, test = split.rows("train"), split.rows("test")
    assert sorted(r["n"] for r in train + test) == list(range(10))
    # Deterministic by content: the same rows in another order land in the same splits.
    shuffled = store.add_rows("numbers-2", many[::-1], splits={"train": 0.7, "test": 0.3})
    assert sorted(r["n"] for r in shuffled.rows("test")) == sorted(r["n"] for r in test)
    with pytest.raises(NotFoundError, match="no split 'dev'"):
        split.rows("dev")


def test_files_jsonl_csv_parquet(library_database: Database, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = DatasetStore(library_database)
    jsonl = tmp_path / "qa.jsonl"
    jsonl.write_text("\n".join(json.dumps(row) for row in ROWS) + "\n\n")
    assert store.add_file("qa", jsonl).rows() == ROWS
    table = tmp_path / "qa.csv"
    with table.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=["question", "answer"])
        writer.writeheader()
        writer.writerows(ROWS)
    from_csv = store.add_file("qa", table, split="eval")
    # Same rows, another split name: another version.
    assert (from_csv.version, from_csv.splits) == (2, {"eval": 3})
    assert from_csv.source["kind"] == "file" and from_csv.source["file"] == "qa.csv"
    parquet = tmp_path / "typed.parquet"
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    pq.write_table(
        pa.table({"x": [1, 2], "score": [0.5, float("nan")], "at": [when, when]}), parquet
    )
    typed = store.add_file("typed", parquet).rows()
    assert typed[0]["x"] == 1 and typed[0]["score"] == 0.5
    assert typed[1]["score"] is None  # NaN has no JSON form
    assert typed[0]["at"].startswith("2026-01-02T03:04:05")


def test_bad_input_is_named(library_database: Database, tmp_path: Path) -> None:
    store = DatasetStore(library_database)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(InvalidRequestError, match=r"broken\.jsonl line 2: not a JSON object"):
        store.add_file("x", broken)
    with pytest.raises(InvalidRequestError, match="cannot tell the format"):
        store.add_file("x", tmp_path / "rows.txt")
    with pytest.raises(InvalidRequestError, match="at least one row"):
        store.add_rows("x", [])
    with pytest.raises(InvalidRequestError, match="add up to 1"):
        store.add_rows("x", ROWS, splits={"train": 0.5, "test": 0.3})
    for bad in ("bad@name", "team/qa", " padded", ""):
        with pytest.raises(InvalidRequestError, match="invalid dataset name"):
            store.add_rows(bad, ROWS)
    with pytest.raises(NotFoundError, match="not found"):
        store.get("missing")
    store.add_rows("x", ROWS)
    with pytest.raises(NotFoundError, match="no version 9"):
        store.get("x@9")


def _capture(database: Database, rows: list[dict[str, Any]], notes: list[dict[str, Any]]) -> None:
    from keel.monitoring.feedback_tables import feedback
    from keel.monitoring.payload_tables import request_payloads

    with database.engine.begin() as conn:
        conn.execute(insert(request_payloads), rows)
        for note in notes:  # one at a time: the rows set different columns
            conn.execute(insert(feedback).values(**note))


def test_rows_from_production_are_filtered_and_masked(library_database: Database) -> None:
    start = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    payloads = [
        {
            "request_id": f"req_{n}",
            "created_at": start + timedelta(minutes=n),
            "model": model,
            "registry_version": None,
            "input_text": text,
            "output_text": f"answer {n}",
        }
        for n, (model, text) in enumerate(
            [
                ("support", "mail me at ann@example.com"),
                ("support", "what is 2+2"),
                ("other", "unrelated"),
                ("support", "late question"),
            ]
        )
    ]
    base = {
        "source": "human",
        "name": "quality",
        "registry_version": "",
        "deployment": "",
        "created_by": "reviewer",
        "model": "support",
    }
    notes = [
        base
        | {
            "request_id": "req_0",
            "label": "good",
            "expected": "ok",
            "requested_at": start,
            "created_at": start,
            "updated_at": start,
        },
        base
        | {
            "request_id": "req_1",
            "label": "bad",
            "correction": "4",
            "requested_at": start,
            "created_at": start,
            "updated_at": start,
        },
    ]
    _capture(library_database, payloads, notes)

    def mask(text: str) -> str:
        return text.replace("ann@example.com", "<EMAIL_ADDRESS>")

    store = DatasetStore(library_database, mask=mask)
    window = store.add_from_production(
        "support-traffic", model="support", since=start, until=start + timedelta(minutes=3)
    )
    rows = window.rows()
    assert [row["request_id"] for row in rows] == ["req_0", "req_1"]  # req_3 is after `until`
    assert rows[0]["input"] == "mail me at <EMAIL_ADDRESS>"
    assert (rows[0]["label"], rows[0]["expected"]) == ("good", "ok")
    assert (rows[1]["label"], rows[1]["expected"]) == ("bad", "4")  # the correction
    assert window.source == {
        "kind": "production",
        "limit": 1000,
        "model": "support",
        "since": start.isoformat(),
        "until": (start + timedelta(minutes=3)).isoformat(),
    }
    bad_only = store.add_from_production("bad-answers", model="support", label="bad")
    assert [row["request_id"] for row in bad_only.rows()] == ["req_1"]
    with pytest.raises(NotFoundError, match="no captured production calls"):
        store.add_from_production("none", model="nobody")
