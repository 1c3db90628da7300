"""Table definitions. Alembic migrations under `migrations/` create and evolve them."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
)

__all__ = ["metadata", "request_records"]

metadata = MetaData()

request_records = Table(
    "request_records",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("endpoint", String(64), nullable=False),
    Column("model_requested", String(255)),
    Column("provider", String(64)),
    Column("deployment", String(255)),
    Column("upstream_model", String(255)),
    Column("stream", Boolean, nullable=False, default=False),
    Column("status_code", Integer, nullable=False),
    Column("error_type", String(64)),
    Column("error_message", String(1000)),
    Column("latency_ms", Float, nullable=False),
    Column("ttft_ms", Float),
    Column("overhead_ms", Float),
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    Column("cached_tokens", Integer),
    Column("reasoning_tokens", Integer),
    Column("cost_usd", Float),
    Column("caller", String(255)),
    Column("attempts", Integer, nullable=False, default=0),
    Column("cache", String(16)),
    Column("team", String(128)),
    Column("key_id", String(40)),
    Column("environment", String(16)),
    Column("guardrails", JSON),
    Column("registry_version", String(255)),  # "name@3" when the model came from the registry
    Index("ix_request_records_created_at", "created_at"),
    Index("ix_request_records_model_requested", "model_requested"),
    Index("ix_request_records_team", "team"),
)
