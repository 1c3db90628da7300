"""drift: drift computations and record embeddings

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "request_payloads",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(255)),
        sa.Column("registry_version", sa.String(255)),
        sa.Column("input_text", sa.Text()),
        sa.Column("output_text", sa.Text()),
        sa.Column("input_embedding", sa.LargeBinary()),
        sa.Column("output_embedding", sa.LargeBinary()),
        sa.Column("run_id", sa.String(255)),
        sa.Column("finish_reason", sa.String(32)),
    )
    op.create_index("ix_request_payloads_created_at", "request_payloads", ["created_at"])
    op.create_index("ix_request_payloads_run_id", "request_payloads", ["run_id"])
    op.create_index("ix_request_payloads_finish_reason", "request_payloads", ["finish_reason"])
    op.create_table(
        "drift_reports",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("target", sa.String(255), nullable=False),
        sa.Column("registry_version", sa.String(255)),
        sa.Column("reference", sa.String(16), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reference_start", sa.DateTime(timezone=True)),
        sa.Column("reference_end", sa.DateTime(timezone=True)),
        sa.Column("run_id", sa.String(255)),
        sa.Column("current_count", sa.Integer(), nullable=False),
        sa.Column("reference_count", sa.Integer(), nullable=False),
        sa.Column("drifted", sa.Boolean(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("checks", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(255)),
    )
    op.create_index("ix_drift_reports_model_created_at", "drift_reports", ["model", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_drift_reports_model_created_at", table_name="drift_reports")
    op.drop_table("drift_reports")
    op.drop_index("ix_request_payloads_finish_reason", table_name="request_payloads")
    op.drop_index("ix_request_payloads_run_id", table_name="request_payloads")
    op.drop_index("ix_request_payloads_created_at", table_name="request_payloads")
    op.drop_table("request_payloads")
