"""State: the database (SQLite by default, PostgreSQL when configured), its migrations, and the
batched writer that keeps request records off the request path."""

from keel.store.database import Database
from keel.store.recorder import RequestRecorder
from keel.store.schema import metadata, request_records

__all__ = ["Database", "RequestRecorder", "metadata", "request_records"]
