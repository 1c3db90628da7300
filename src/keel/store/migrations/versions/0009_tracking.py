"""tracking: experiments, runs, params, metrics, artifacts

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_NAME = 255
_ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _at(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _run_id(primary_key: bool = True) -> sa.Column[str]:
    return sa.Column("run_id", sa.String(40), primary_key=primary_key, nullable=False)


def upgrade() -> None:
    op.create_table(
        "tracking_experiments",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(_NAME), nullable=False, unique=True),
        sa.Column("description", sa.String(2000)),
        sa.Column("created_by", sa.String(_NAME), nullable=False),
        _at("created_at"),
    )
    op.create_table(
        "tracking_runs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("experiment_id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(_NAME)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.String(2000)),
        sa.Column("created_by", sa.String(_NAME), nullable=False),
        sa.Column("key_id", sa.String(40)),
        sa.Column("environment", sa.String(16)),
        sa.Column("team", sa.String(128)),
        _at("started_at"),
        _at("ended_at", nullable=True),
        _at("heartbeat_at"),
        sa.Column("git_commit", sa.String(64)),
        sa.Column("git_dirty", sa.Boolean),
        sa.Column("python_version", sa.String(64)),
        sa.Column("packages_digest", sa.String(80)),
        sa.Column("host", sa.String(_NAME)),
    )
    op.create_index("ix_tracking_runs_experiment", "tracking_runs", ["experiment_id", "started_at"])
    op.create_index("ix_tracking_runs_status", "tracking_runs", ["status"])
    for table in ("tracking_params", "tracking_tags"):
        op.create_table(
            table,
            _run_id(),
            sa.Column("key", sa.String(255), primary_key=True),
            sa.Column("value", sa.Text, nullable=False),
        )
    op.create_table(
        "tracking_metrics",
        sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
        _run_id(primary_key=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("step", sa.BigInteger, nullable=False),
        sa.Column("timestamp_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_tracking_metrics_run_key", "tracking_metrics", ["run_id", "key", "step"])
    op.create_table(
        "tracking_artifacts",
        _run_id(),
        sa.Column("name", sa.String(500), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("media_type", sa.String(255)),
        sa.Column("uri", sa.String(1000), nullable=False),
        _at("created_at"),
    )
    op.create_table(
        "tracking_inputs",
        _run_id(),
        sa.Column("kind", sa.String(64), primary_key=True),
        sa.Column("ref", sa.String(_NAME), primary_key=True),
        sa.Column("name", sa.String(_NAME)),
        sa.Column("version", sa.Integer),
        sa.Column("relation", sa.String(64), nullable=False),
        _at("created_at"),
    )
    op.create_table(
        "tracking_model_configs",
        sa.Column("name", sa.String(_NAME), primary_key=True),
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("created_by", sa.String(_NAME), nullable=False),
        _at("created_at"),
        sa.UniqueConstraint("name", "version", name="uq_tracking_model_configs_version"),
    )


def downgrade() -> None:
    for table in (
        "tracking_model_configs",
        "tracking_inputs",
        "tracking_artifacts",
        "tracking_metrics",
        "tracking_tags",
        "tracking_params",
        "tracking_runs",
        "tracking_experiments",
    ):
        op.drop_table(table)
