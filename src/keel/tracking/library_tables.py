"""Tables for versioned datasets and prompt templates, on Keel's shared `metadata` (migration
0010 creates them). Versions are immutable and never deleted; alias moves are append-only."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from keel.store.schema import metadata

__all__ = [
    "dataset_rows",
    "dataset_versions",
    "datasets",
    "prompt_alias_history",
    "prompt_aliases",
    "prompt_versions",
    "prompts",
]

_NAME = 255

datasets = Table(
    "datasets",
    metadata,
    Column("name", String(_NAME), primary_key=True),
    Column("description", Text),
    Column("created_by", String(_NAME), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

dataset_versions = Table(
    "dataset_versions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dataset", String(_NAME), ForeignKey("datasets.name"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("digest", String(80), nullable=False),
    Column("splits", JSON, nullable=False),  # {split: row count}, in the order given
    Column("columns", JSON, nullable=False),  # field names, in first-seen order
    Column("source", JSON, nullable=False),  # where the rows came from (file, production filter)
    Column("description", Text),
    Column("created_by", String(_NAME), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("dataset", "version", name="uq_dataset_versions_dataset_version"),
    Index("ix_dataset_versions_dataset_digest", "dataset", "digest"),
)

dataset_rows = Table(
    "dataset_rows",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("version_id", Integer, ForeignKey("dataset_versions.id"), nullable=False),
    Column("split", String(_NAME), nullable=False),
    Column("position", Integer, nullable=False),
    Column("data", JSON, nullable=False),
    Index("ix_dataset_rows_version_split_position", "version_id", "split", "position"),
)

prompts = Table(
    "prompts",
    metadata,
    Column("name", String(_NAME), primary_key=True),
    Column("created_by", String(_NAME), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

prompt_versions = Table(
    "prompt_versions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("prompt", String(_NAME), ForeignKey("prompts.name"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("digest", String(80), nullable=False),
    Column("template", JSON, nullable=False),  # a string, or a list of {role, content}
    Column("variables", JSON, nullable=False),  # sorted names
    Column("description", Text),
    Column("created_by", String(_NAME), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("prompt", "version", name="uq_prompt_versions_prompt_version"),
)

prompt_aliases = Table(
    "prompt_aliases",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("prompt", String(_NAME), ForeignKey("prompts.name"), nullable=False),
    Column("alias", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("updated_by", String(_NAME), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("prompt", "alias", name="uq_prompt_aliases_prompt_alias"),
)

prompt_alias_history = Table(
    "prompt_alias_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("prompt", String(_NAME), ForeignKey("prompts.name"), nullable=False),
    Column("alias", String(64), nullable=False),
    Column("from_version", Integer),
    Column("to_version", Integer, nullable=False),
    Column("actor", String(_NAME), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Index("ix_prompt_alias_history_prompt_alias", "prompt", "alias"),
)
