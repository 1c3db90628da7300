"""Stored drift reports: one row per computation, so drift can be charted and alerted on."""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Column, DateTime, Index, Integer, String, Table

from keel.store.schema import metadata

__all__ = ["drift_reports"]

drift_reports = Table(
    "drift_reports",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("model", String(255), nullable=False),  # the model name, without "@alias"
    Column("target", String(255), nullable=False),  # as asked: "name", "name@production"
    Column("registry_version", String(255)),  # the version the benchmark came from
    Column("reference", String(16), nullable=False),  # "benchmark" or "window"
    Column("window_start", DateTime(timezone=True), nullable=False),
    Column("window_end", DateTime(timezone=True), nullable=False),
    Column("reference_start", DateTime(timezone=True)),
    Column("reference_end", DateTime(timezone=True)),
    Column("run_id", String(255)),  # the benchmark run, for reference "benchmark"
    Column("current_count", Integer, nullable=False),
    Column("reference_count", Integer, nullable=False),
    Column("drifted", Boolean, nullable=False),
    Column("metrics", JSON, nullable=False),  # flat {name: number or null}
    Column("checks", JSON, nullable=False),  # one entry per check, with threshold and verdict
    Column("created_by", String(255)),
    Index("ix_drift_reports_model_created_at", "model", "created_at"),
)
