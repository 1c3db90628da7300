"""Feedback tables, on the same `metadata` as the rest of Keel (migration 0006 creates them).

`feedback` keeps one row per (request, source, name): a second post with the same triple
replaces the first. `feedback_quality` holds the counts quality is computed from, one row per
model, registry version, deployment, source, hour of the request, expected class and predicted
class (both empty for thumbs: only the correct flag is known). It is kept in step with
`feedback` in the same transaction as each write, so a quality query sums a few thousand
aggregate rows whatever the number of feedback rows.
"""

from __future__ import annotations

from sqlalchemy import (
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

__all__ = ["LABEL_LENGTH", "NAME_LENGTH", "feedback", "feedback_quality"]

NAME_LENGTH = 255
LABEL_LENGTH = 255

feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(64), nullable=False),
    Column("source", String(16), nullable=False),
    Column("name", String(NAME_LENGTH), nullable=False),
    Column("thumbs", String(4)),
    Column("label", String(LABEL_LENGTH)),
    Column("expected", String(LABEL_LENGTH)),
    Column("score", Float),
    Column("correction", Text),
    Column("comment", Text),
    # Copied from the request record: the aggregates are keyed on them, and a replaced row's
    # old contribution must be found again without the record. Empty text when it had none.
    Column("model", String(255), nullable=False),
    Column("registry_version", String(255), nullable=False),
    Column("deployment", String(255), nullable=False),
    Column("team", String(128)),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(255), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("request_id", "source", "name", name="uq_feedback_request_source_name"),
)

feedback_quality = Table(
    "feedback_quality",
    metadata,
    # Model and hour lead the key: every quality query is one model over a range of hours.
    Column("model", String(255), primary_key=True),
    Column("bucket", DateTime(timezone=True), primary_key=True),
    Column("registry_version", String(255), primary_key=True),
    Column("deployment", String(255), primary_key=True),
    Column("source", String(16), primary_key=True),
    Column("expected", String(LABEL_LENGTH), primary_key=True),
    Column("predicted", String(LABEL_LENGTH), primary_key=True),
    Column("correct", Boolean, primary_key=True),
    Column("count", Integer, nullable=False),
    # The gauges read every model's recent hours at once.
    Index("ix_feedback_quality_bucket", "bucket"),
)
