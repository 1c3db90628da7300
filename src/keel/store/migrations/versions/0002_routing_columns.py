"""request records: attempts and cache outcome

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("request_records") as table:
        table.add_column(sa.Column("attempts", sa.Integer, nullable=False, server_default="0"))
        table.add_column(sa.Column("cache", sa.String(16)))


def downgrade() -> None:
    with op.batch_alter_table("request_records") as table:
        table.drop_column("cache")
        table.drop_column("attempts")
