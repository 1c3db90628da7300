"""traces: stored spans of gateway calls

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Which registry version answered: quality and drift are computed per version.
    with op.batch_alter_table("request_records") as batch:
        batch.add_column(sa.Column("registry_version", sa.String(255)))
    # traces: below
    op.create_table(
        "spans",
        sa.Column("trace_id", sa.String(32), primary_key=True),
        sa.Column("span_id", sa.String(16), primary_key=True),
        sa.Column("parent_span_id", sa.String(16)),
        sa.Column("request_id", sa.String(64)),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.Float, nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("status_message", sa.String(1000)),
        sa.Column("attributes", sa.JSON, nullable=False),
    )
    op.create_index("ix_spans_request_id", "spans", ["request_id"])
    op.create_index("ix_spans_start_time", "spans", ["start_time"])


def downgrade() -> None:
    op.drop_index("ix_spans_start_time", table_name="spans")
    op.drop_index("ix_spans_request_id", table_name="spans")
    op.drop_table("spans")
    with op.batch_alter_table("request_records") as batch:
        batch.drop_column("registry_version")
