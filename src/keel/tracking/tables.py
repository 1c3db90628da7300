"""Tracking tables, on the same `metadata` as the rest of Keel (migration 0009 creates them).

Metric points are the one table that grows fast: one row per point, with the step and the
client's timestamp (epoch milliseconds, as the client measured it, not when it was written).
Params and tags are one row per key (the latest value wins); model configurations are stored
once per content digest, with a human version number per configuration name.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from keel.store.schema import metadata

__all__ = [
    "tracking_artifacts",
    "tracking_experiments",
    "tracking_inputs",
    "tracking_metrics",
    "tracking_model_configs",
    "tracking_params",
    "tracking_runs",
    "tracking_tags",
]

NAME = 255
KEY = 255
VALUE = 6000

# SQLite autoincrements only an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit sequence.
_ROW_ID = BigInteger().with_variant(Integer(), "sqlite")

tracking_experiments = Table(
    "tracking_experiments",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(NAME), nullable=False, unique=True),
    Column("description", String(2000)),
    Column("created_by", String(NAME), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

tracking_runs = Table(
    "tracking_runs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("experiment_id", String(40), nullable=False),
    Column("name", String(NAME)),
    Column("status", String(16), nullable=False),
    Column("error", String(2000)),
    Column("created_by", String(NAME), nullable=False),
    Column("key_id", String(40)),
    Column("environment", String(16)),
    Column("team", String(128)),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True)),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False),
    Column("git_commit", String(64)),
    Column("git_dirty", Boolean),
    Column("python_version", String(64)),
    Column("packages_digest", String(80)),
    Column("host", String(NAME)),
    Index("ix_tracking_runs_experiment", "experiment_id", "started_at"),
    Index("ix_tracking_runs_status", "status"),
)

tracking_params = Table(
    "tracking_params",
    metadata,
    Column("run_id", String(40), primary_key=True),
    Column("key", String(KEY), primary_key=True),
    Column("value", Text, nullable=False),
)

tracking_tags = Table(
    "tracking_tags",
    metadata,
    Column("run_id", String(40), primary_key=True),
    Column("key", String(KEY), primary_key=True),
    Column("value", Text, nullable=False),
)

tracking_metrics = Table(
    "tracking_metrics",
    metadata,
    Column("id", _ROW_ID, primary_key=True, autoincrement=True),
    Column("run_id", String(40), nullable=False),
    Column("key", String(KEY), nullable=False),
    Column("value", Float, nullable=False),
    Column("step", BigInteger, nullable=False),
    Column("timestamp_ms", BigInteger, nullable=False),
    Index("ix_tracking_metrics_run_key", "run_id", "key", "step"),
)

tracking_artifacts = Table(
    "tracking_artifacts",
    metadata,
    Column("run_id", String(40), primary_key=True),
    Column("name", String(500), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("media_type", String(255)),
    Column("uri", String(1000), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# What a run used: a prompt or dataset version (engineer-owned stores, by digest or id), a
# model configuration (by digest), or any other lineage entity.
tracking_inputs = Table(
    "tracking_inputs",
    metadata,
    Column("run_id", String(40), primary_key=True),
    Column("kind", String(64), primary_key=True),
    Column("ref", String(NAME), primary_key=True),
    Column("name", String(NAME)),
    Column("version", Integer),
    Column("relation", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

tracking_model_configs = Table(
    "tracking_model_configs",
    metadata,
    Column("name", String(NAME), primary_key=True),
    Column("digest", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("config", JSON, nullable=False),
    Column("created_by", String(NAME), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("name", "version", name="uq_tracking_model_configs_version"),
)
