"""Captured payloads: the masked prompt and answer text of calls, with their embeddings.

Written only when `drift.capture` is on (see `keel.monitoring.capture`); read by drift reports
and by datasets built from production traffic. The table name and its first eight columns are
a contract with those readers: add columns, never rename or drop them.
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, LargeBinary, String, Table, Text

from keel.store.schema import metadata

__all__ = ["request_payloads"]

request_payloads = Table(
    "request_payloads",
    metadata,
    # The request record's id (request_records.id); no foreign key, as the two tables are
    # written by separate batch writers that may land in either order.
    Column("request_id", String(64), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("model", String(255)),  # the model the client asked for
    Column("registry_version", String(255)),  # "name@3" when the model came from the registry
    Column("input_text", Text),  # PII masked under the `pii.store` policy
    Column("output_text", Text),  # None for streamed answers and failed calls
    Column("input_embedding", LargeBinary),  # little-endian float32, `drift.embedding_model`
    Column("output_embedding", LargeBinary),
    # The benchmark run a request belonged to (its x-keel-run-id header), if any.
    Column("run_id", String(255)),
    Column("finish_reason", String(32)),
    Index("ix_request_payloads_created_at", "created_at"),
    Index("ix_request_payloads_run_id", "run_id"),
    Index("ix_request_payloads_finish_reason", "finish_reason"),
)
