"""Storage on both engines: migrations, request records, and the batched recorder."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect

from keel.gateway import Call
from keel.store import Database, RequestRecorder
from keel.store.database import normalize_url
from tests.conftest import remote_settings, running_app


def a_record(index: int = 0) -> dict[str, Any]:
    call = Call(endpoint="chat.completions")
    call.model_requested = f"model-{index}"
    row = call.record()
    row["created_at"] = datetime(2026, 1, 1, 0, 0, index % 60, tzinfo=UTC)
    return row


def test_migrations_create_the_schema_and_are_idempotent(database_url: str) -> None:
    database = Database(database_url)
    database.migrate()
    database.migrate()
    tables = set(inspect(database.engine).get_table_names())
    assert {"request_records", "alembic_version"} <= tables
    database.dispose()


def test_replicas_migrating_a_fresh_postgres_together_both_succeed(postgres_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    databases = [Database(postgres_url) for _ in range(3)]
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda database: database.migrate(), databases))
    assert "audit_log" in inspect(databases[0].engine).get_table_names()
    for database in databases:
        database.dispose()


def test_records_round_trip(database_url: str) -> None:
    database = Database(database_url)
    database.migrate()
    rows = [a_record(i) for i in range(3)]
    database.insert_records(rows)
    assert database.get_record(rows[1]["id"])["model_requested"] == "model-1"  # type: ignore[index]
    recent = database.recent_records(limit=2)
    assert [r["model_requested"] for r in recent] == ["model-2", "model-1"]
    assert database.recent_records(model="model-0")[0]["id"] == rows[0]["id"]
    database.dispose()


async def test_recorder_batches_and_stop_flushes_everything(database_url: str) -> None:
    database = Database(database_url)
    database.migrate()
    recorder = RequestRecorder(database, batch_size=50, flush_interval_s=10)
    await recorder.start()
    for index in range(1234):
        recorder.add(a_record(index))
    await recorder.stop()
    assert recorder.pending == 0
    assert recorder.written == 1234
    assert len(database.recent_records(limit=5000)) == 1234
    database.dispose()


class FlakyDatabase(Database):
    """A real database whose first writes fail, as when the server is briefly unreachable."""

    def __init__(self, url: str, failures: int) -> None:
        super().__init__(url)
        self.failures = failures

    def insert_records(self, rows: list[dict[str, Any]]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("database unreachable")
        super().insert_records(rows)


async def test_failed_writes_are_retried_not_dropped(tmp_path: Path) -> None:
    database = FlakyDatabase(f"sqlite:///{tmp_path / 'keel.db'}", failures=2)
    database.migrate()
    recorder = RequestRecorder(database, batch_size=10, flush_interval_s=0.01)
    await recorder.start()
    for index in range(25):
        recorder.add(a_record(index))
    await asyncio.wait_for(recorder.flush(), timeout=10)
    await recorder.stop()
    assert len(database.recent_records(limit=100)) == 25


def test_bare_postgres_urls_use_psycopg() -> None:
    assert normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"


async def test_the_server_records_into_postgresql(
    postgres_url: str, keel_home: Path, fake_openai_url: str
) -> None:
    settings = remote_settings(
        keel_home,
        [{"id": "gpt", "provider": "openai", "api_base": fake_openai_url, "api_key": "k"}],
        database_url=postgres_url,
    )
    async with running_app(settings) as (_app, client):
        ids = []
        for _ in range(5):
            response = await client.post(
                "/v1/chat/completions",
                json={"model": "gpt", "messages": [{"role": "user", "content": "hi"}]},
            )
            ids.append(response.headers["x-keel-request-id"])
        assert (await client.get("/readyz")).json()["checks"]["database"] == "ok"
    # Leaving the lifespan is a graceful stop: every record must be in PostgreSQL now.
    database = Database(postgres_url)
    stored = {row["id"] for row in database.recent_records(limit=100)}
    database.dispose()
    assert stored == set(ids)


@pytest.mark.parametrize("count", [1, 3])
async def test_exactly_one_record_per_call(
    count: int, keel_home: Path, fake_openai_url: str
) -> None:
    settings = remote_settings(
        keel_home, [{"id": "gpt", "provider": "openai", "api_base": fake_openai_url}]
    )
    async with running_app(settings) as (app, client):
        for _ in range(count):
            await client.post(
                "/v1/chat/completions",
                json={"model": "gpt", "messages": [{"role": "user", "content": "hi"}]},
            )
            await client.post("/v1/chat/completions", json={"model": "gpt"})
        await app.state.keel.recorder.flush()
        rows = app.state.keel.database.recent_records(limit=100)
    assert sorted(r["status_code"] for r in rows) == [200] * count + [400] * count
