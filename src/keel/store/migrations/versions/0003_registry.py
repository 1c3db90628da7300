"""model registry: models, versions, aliases, promotions, gates, evaluations, lineage

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_NAME = 255
_MODEL_FK = "registry_models.name"


def _model() -> sa.Column[str]:
    return sa.Column("model", sa.String(_NAME), sa.ForeignKey(_MODEL_FK), nullable=False)


def _at(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "registry_models",
        sa.Column("name", sa.String(_NAME), primary_key=True),
        sa.Column("archived", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_by", sa.String(_NAME), nullable=False),
        _at("created_at"),
        _at("archived_at", nullable=True),
    )
    op.create_table(
        "registry_versions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        _model(),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("digest", sa.String(128), nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("card", sa.JSON, nullable=False),
        sa.Column("created_by", sa.String(_NAME), nullable=False),
        _at("created_at"),
        sa.UniqueConstraint("model", "number", name="uq_registry_versions_model_number"),
    )
    op.create_table(
        "registry_aliases",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        _model(),
        sa.Column("alias", sa.String(_NAME), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("updated_by", sa.String(_NAME), nullable=False),
        _at("updated_at"),
        sa.UniqueConstraint("model", "alias", name="uq_registry_aliases_model_alias"),
    )
    op.create_table(
        "registry_alias_history",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        _model(),
        sa.Column("alias", sa.String(_NAME), nullable=False),
        sa.Column("from_version", sa.Integer),
        sa.Column("to_version", sa.Integer, nullable=False),
        sa.Column("actor", sa.String(_NAME), nullable=False),
        sa.Column("reason", sa.String(2000), nullable=False),
        sa.Column("approval_id", sa.String(64)),
        _at("at"),
    )
    op.create_index(
        "ix_registry_alias_history_model_alias_at",
        "registry_alias_history",
        ["model", "alias", "at"],
    )
    op.create_table(
        "registry_promotions",
        sa.Column("id", sa.String(64), primary_key=True),
        _model(),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("requested_by", sa.String(_NAME), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("comment", sa.String(2000)),
        _at("created_at"),
        _at("expires_at", nullable=True),
        _at("decided_at", nullable=True),
        sa.Column("overridden_by", sa.String(_NAME)),
    )
    op.create_index(
        "uq_registry_promotions_pending",
        "registry_promotions",
        ["model", "stage"],
        unique=True,
        sqlite_where=sa.text("status = 'pending'"),
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_table(
        "registry_approvals",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "promotion_id",
            sa.String(64),
            sa.ForeignKey("registry_promotions.id"),
            nullable=False,
        ),
        sa.Column("approver", sa.String(_NAME), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("comment", sa.String(2000)),
        _at("at"),
        sa.UniqueConstraint(
            "promotion_id", "approver", name="uq_registry_approvals_promotion_approver"
        ),
    )
    op.create_table(
        "registry_gates",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        _model(),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("metric", sa.String(_NAME), nullable=False),
        sa.Column("op", sa.String(2), nullable=False),
        sa.Column("threshold", sa.Float, nullable=False),
        sa.Column("dataset", sa.String(_NAME)),
    )
    op.create_index("ix_registry_gates_model_stage", "registry_gates", ["model", "stage"])
    op.create_table(
        "registry_evaluations",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        _model(),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("metric", sa.String(_NAME), nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("dataset", sa.String(_NAME)),
        sa.Column("run_id", sa.String(_NAME)),
        sa.Column("created_by", sa.String(_NAME), nullable=False),
        _at("created_at"),
    )
    op.create_index(
        "ix_registry_evaluations_model_version", "registry_evaluations", ["model", "version"]
    )
    op.create_table(
        "lineage_links",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("upstream_kind", sa.String(64), nullable=False),
        sa.Column("upstream_id", sa.String(_NAME), nullable=False),
        sa.Column("downstream_kind", sa.String(64), nullable=False),
        sa.Column("downstream_id", sa.String(_NAME), nullable=False),
        sa.Column("relation", sa.String(64), nullable=False),
        sa.Column("created_by", sa.String(_NAME), nullable=False),
        _at("created_at"),
        sa.UniqueConstraint(
            "upstream_kind",
            "upstream_id",
            "downstream_kind",
            "downstream_id",
            "relation",
            name="uq_lineage_links_edge",
        ),
    )
    op.create_index("ix_lineage_links_upstream", "lineage_links", ["upstream_kind", "upstream_id"])
    op.create_index(
        "ix_lineage_links_downstream", "lineage_links", ["downstream_kind", "downstream_id"]
    )


def downgrade() -> None:
    op.drop_table("lineage_links")
    op.drop_table("registry_evaluations")
    op.drop_table("registry_gates")
    op.drop_table("registry_approvals")
    op.drop_table("registry_promotions")
    op.drop_table("registry_alias_history")
    op.drop_table("registry_aliases")
    op.drop_table("registry_versions")
    op.drop_table("registry_models")
