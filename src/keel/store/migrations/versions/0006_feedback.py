"""feedback: feedback on requests

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_LABEL = 255


def _at(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("thumbs", sa.String(4)),
        sa.Column("label", sa.String(_LABEL)),
        sa.Column("expected", sa.String(_LABEL)),
        sa.Column("score", sa.Float),
        sa.Column("correction", sa.Text),
        sa.Column("comment", sa.Text),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("registry_version", sa.String(255), nullable=False),
        sa.Column("deployment", sa.String(255), nullable=False),
        sa.Column("team", sa.String(128)),
        _at("requested_at"),
        sa.Column("created_by", sa.String(255), nullable=False),
        _at("created_at"),
        _at("updated_at"),
        sa.UniqueConstraint("request_id", "source", "name", name="uq_feedback_request_source_name"),
    )
    op.create_table(
        "feedback_quality",
        sa.Column("model", sa.String(255), primary_key=True),
        sa.Column("bucket", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("registry_version", sa.String(255), primary_key=True),
        sa.Column("deployment", sa.String(255), primary_key=True),
        sa.Column("source", sa.String(16), primary_key=True),
        sa.Column("expected", sa.String(_LABEL), primary_key=True),
        sa.Column("predicted", sa.String(_LABEL), primary_key=True),
        sa.Column("correct", sa.Boolean, primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
    )
    op.create_index("ix_feedback_quality_bucket", "feedback_quality", ["bucket"])


def downgrade() -> None:
    op.drop_index("ix_feedback_quality_bucket", table_name="feedback_quality")
    op.drop_table("feedback_quality")
    op.drop_table("feedback")
