"""datasets_prompts: datasets and prompt templates

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_NAME = 255


def _at(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("name", sa.String(_NAME), primary_key=True),
        sa.Column("description", sa.Text),
        sa.Column("created_by", sa.String(_NAME), nullable=False),
        _at("created_at"),
    )
    op.create_table(
        "dataset_versions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("dataset", sa.String(_NAME), sa.ForeignKey("datasets.name"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("digest", sa.String(80), nullable=False),
        sa.Column("splits", sa.JSON, nullable=False),
        sa.Column("columns", sa.JSON, nullable=False),
        sa.Column("source", sa.JSON, nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("created_by", sa.String(_NAME), nullable=False),
        _at("created_at"),
        sa.UniqueConstraint("dataset", "version", name="uq_dataset_versions_dataset_version"),
    )
    op.create_index("ix_dataset_versions_dataset_digest", "dataset_versions", ["dataset", "digest"])
    op.create_table(
        "dataset_rows",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("version_id", sa.Integer, sa.ForeignKey("dataset_versions.id"), nullable=False),
        sa.Column("split", sa.String(_NAME), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
    )
    op.create_index(
        "ix_dataset_rows_version_split_position",
        "dataset_rows",
        ["version_id", "split", "position"],
    )
    op.create_table(
        "prompts",
        sa.Column("name", sa.String(_NAME), primary_key=True),
        sa.Column("created_by", sa.String(_NAME), nullable=False),
        _at("created_at"),
    )
    op.create_table(
        "prompt_versions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("prompt", sa.String(_NAME), sa.ForeignKey("prompts.name"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("digest", sa.String(80), nullable=False),
        sa.Column("template", sa.JSON, nullable=False),
        sa.Column("variables", sa.JSON, nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("created_by", sa.String(_NAME), nullable=False),
        _at("created_at"),
        sa.UniqueConstraint("prompt", "version", name="uq_prompt_versions_prompt_version"),
    )
    op.create_table(
        "prompt_aliases",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("prompt", sa.String(_NAME), sa.ForeignKey("prompts.name"), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("updated_by", sa.String(_NAME), nullable=False),
        _at("updated_at"),
        sa.UniqueConstraint("prompt", "alias", name="uq_prompt_aliases_prompt_alias"),
    )
    op.create_table(
        "prompt_alias_history",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("prompt", sa.String(_NAME), sa.ForeignKey("prompts.name"), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("from_version", sa.Integer),
        sa.Column("to_version", sa.Integer, nullable=False),
        sa.Column("actor", sa.String(_NAME), nullable=False),
        _at("at"),
    )
    op.create_index(
        "ix_prompt_alias_history_prompt_alias", "prompt_alias_history", ["prompt", "alias"]
    )


def downgrade() -> None:
    op.drop_index("ix_prompt_alias_history_prompt_alias", table_name="prompt_alias_history")
    op.drop_table("prompt_alias_history")
    op.drop_table("prompt_aliases")
    op.drop_table("prompt_versions")
    op.drop_table("prompts")
    op.drop_index("ix_dataset_rows_version_split_position", table_name="dataset_rows")
    op.drop_table("dataset_rows")
    op.drop_index("ix_dataset_versions_dataset_digest", table_name="dataset_versions")
    op.drop_table("dataset_versions")
    op.drop_table("datasets")
