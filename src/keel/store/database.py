from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import OperationalError

from keel.errors import ConfigError
from keel.store.schema import request_records

__all__ = ["Database", "normalize_url"]

_MIGRATIONS = Path(__file__).parent / "migrations"


def normalize_url(url: str) -> str:
    """Pick the psycopg 3 driver for bare postgres URLs; other drivers are left as given."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


_MIGRATION_LOCK = 0x6B65656C6D696772  # "keelmigr"


class Database:
    """A synchronous engine, used from worker threads only (never on the event loop)."""

    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
        parsed = make_url(self.url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # hide_parameters: a logged database error names the statement, never the values bound
        # to it (secret hashes, emails, audit entries).
        self.engine: Engine = create_engine(self.url, pool_pre_ping=True, hide_parameters=True)
        if parsed.get_backend_name() == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent). A database that cannot be
        reached or used is a ConfigError naming `database_url`, in one line."""
        try:
            self._migrate()
        except OperationalError as exc:
            raise ConfigError(_unusable(make_url(self.url), exc)) from None

    def _migrate(self) -> None:
        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS))
        with self.engine.begin() as connection:
            if self.backend == "postgresql":
                # Replicas starting together would race to create the same tables; the lock
                # makes the others wait, then find the schema already at head.
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK}
                )
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def insert_records(self, rows: list[dict[str, Any]]) -> None:
        with self.engine.begin() as connection:
            connection.execute(request_records.insert(), rows)

    def recent_records(
        self,
        limit: int = 50,
        model: str | None = None,
        *,
        team: str | None = None,
        caller: str | None = None,
    ) -> list[dict[str, Any]]:
        query = select(request_records).order_by(request_records.c.created_at.desc()).limit(limit)
        if model is not None:
            query = query.where(request_records.c.model_requested == model)
        if team is not None:
            query = query.where(request_records.c.team == team)
        if caller is not None:
            query = query.where(request_records.c.caller == caller)
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def get_record(self, record_id: str) -> dict[str, Any] | None:
        query = select(request_records).where(request_records.c.id == record_id)
        with self.engine.connect() as connection:
            row = connection.execute(query).first()
        return dict(row._mapping) if row else None

    def dispose(self) -> None:
        self.engine.dispose()


_MISSING_DATABASE = re.compile(r'database "([^"]+)" does not exist')


def _unusable(url: URL, error: OperationalError) -> str:
    """What went wrong, from the driver's first line (its FATAL line for PostgreSQL), without
    the URL's password."""
    if url.get_backend_name() == "sqlite":
        return f"database_url: cannot use the SQLite database {url.database}: {error.orig}"
    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    text = str(error.orig)
    missing = _MISSING_DATABASE.search(text)
    if missing:
        name = missing.group(1)
        return (
            f'database_url: database "{name}" does not exist on {where}; create it '
            f"(createdb {name}) or point KEEL_DATABASE_URL elsewhere"
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    fatal = next((line for line in lines if "FATAL:" in line), None)
    reason = fatal.split("FATAL:", 1)[1].strip() if fatal else (lines[0] if lines else "")
    reason = reason.removeprefix("connection failed: ")
    return (
        f"database_url: cannot use the database on {where}: {reason}; check database_url "
        "(or KEEL_DATABASE_URL)"
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers (the records API) run while the recorder writes.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
