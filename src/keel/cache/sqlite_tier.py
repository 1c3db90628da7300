"""The persistent second tier on one replica: a SQLite file of its own (by default
`<KEEL_HOME>/cache.sqlite3`), outside the Keel database and its migrations.

Why a separate file: cached responses are disposable, large and written on every miss; kept
apart they never contend with the request recorder for SQLite's single writer, never bloat the
records database or its backups, and can be deleted at any time. The schema carries its own
version (`PRAGMA user_version`); a file from another version is emptied, not migrated.

All I/O runs on one dedicated worker thread that owns the connection, so the event loop never
blocks and no connection is shared across threads.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from keel.cache.tier import Clock, StoredVector

__all__ = ["SQLiteTier"]

T = TypeVar("T")
_SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS cache_entries (
    key TEXT PRIMARY KEY,
    expires_at REAL NOT NULL,
    response BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_cache_entries_expires_at ON cache_entries (expires_at);
CREATE TABLE IF NOT EXISTS semantic_entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    scope TEXT NOT NULL,
    entry_id TEXT NOT NULL,
    context INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    vector BLOB NOT NULL,
    response BLOB NOT NULL,
    prompt TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS ix_semantic_entries_scope ON semantic_entries (scope, seq);
CREATE INDEX IF NOT EXISTS ix_semantic_entries_expires_at ON semantic_entries (expires_at);
"""
_READ_BATCH = 1000


class SQLiteTier:
    name = "sqlite"

    def __init__(
        self,
        path: str | Path,
        *,
        max_entries: int = 100_000,
        prune_every: int = 500,
        clock: Clock = time.time,
    ) -> None:
        self.path = Path(path).expanduser()
        self._max_entries = max_entries
        self._prune_every = prune_every
        self._clock = clock
        self._writes = 0
        self._connection: sqlite3.Connection | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keel-cache-sqlite")
        self._closed = False

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise RuntimeError("the SQLite cache tier is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: work(self._connect()))

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
            # WAL lets a second process on the host (another replica, the CLI) read while this
            # one writes; synchronous=NORMAL is durable enough for a cache.
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, _SCHEMA_VERSION):
                connection.executescript(
                    "DROP TABLE IF EXISTS cache_entries; DROP TABLE IF EXISTS semantic_entries;"
                )
            connection.executescript(_SCHEMA)
            connection.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            self._connection = connection
        return self._connection

    async def get(self, key: str) -> tuple[bytes, float] | None:
        def read(connection: sqlite3.Connection) -> tuple[bytes, float] | None:
            row = connection.execute(
                "SELECT response, expires_at FROM cache_entries WHERE key = ?", (key,)
            ).fetchone()
            return None if row is None else (bytes(row[0]), float(row[1]))

        return await self._run(read)

    async def put(self, key: str, payload: bytes, expires_at: float, ttl_s: float) -> None:
        def write(connection: sqlite3.Connection) -> None:
            connection.execute(
                "INSERT OR REPLACE INTO cache_entries (key, expires_at, response) VALUES (?, ?, ?)",
                (key, expires_at, payload),
            )
            self._after_write(connection)

        await self._run(write)

    async def append_vector(self, scope: str, record: StoredVector, ttl_s: float) -> None:
        def write(connection: sqlite3.Connection) -> None:
            connection.execute(
                "INSERT INTO semantic_entries"
                " (scope, entry_id, context, expires_at, vector, response, prompt)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    scope,
                    record.entry_id,
                    record.context,
                    record.expires_at,
                    record.vector,
                    record.response,
                    record.prompt,
                ),
            )
            self._after_write(connection)

        await self._run(write)

    async def read_vectors(
        self, scope: str, cursor: str | None, now: float
    ) -> tuple[list[StoredVector], str | None]:
        def read(connection: sqlite3.Connection) -> tuple[list[StoredVector], str | None]:
            last = int(cursor) if cursor else 0
            records: list[StoredVector] = []
            while True:
                rows = connection.execute(
                    "SELECT seq, entry_id, context, expires_at, vector, response, prompt"
                    " FROM semantic_entries WHERE scope = ? AND seq > ? ORDER BY seq LIMIT ?",
                    (scope, last, _READ_BATCH),
                ).fetchall()
                for seq, entry_id, context, expires_at, vector, response, prompt in rows:
                    last = seq
                    if expires_at > now:
                        records.append(
                            StoredVector(
                                entry_id,
                                context,
                                bytes(vector),
                                bytes(response),
                                expires_at,
                                prompt,
                            )
                        )
                if len(rows) < _READ_BATCH:
                    return records, str(last) if last else cursor

        return await self._run(read)

    def _after_write(self, connection: sqlite3.Connection) -> None:
        # Pruning on a write count keeps the file bounded without a timer task of its own.
        self._writes += 1
        if self._writes % self._prune_every:
            return
        now = self._clock()
        connection.execute("DELETE FROM cache_entries WHERE expires_at <= ?", (now,))
        connection.execute("DELETE FROM semantic_entries WHERE expires_at <= ?", (now,))
        for table, order in (("cache_entries", "expires_at"), ("semantic_entries", "seq")):
            (count,) = connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
            if count > self._max_entries:
                connection.execute(
                    f"DELETE FROM {table} WHERE rowid IN"
                    f" (SELECT rowid FROM {table} ORDER BY {order} LIMIT ?)",
                    (count - self._max_entries,),
                )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        def shut() -> None:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

        await asyncio.get_running_loop().run_in_executor(self._executor, shut)
        self._executor.shutdown(wait=True)
