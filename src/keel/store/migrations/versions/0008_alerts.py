"""alerts: alert rules, states, history and deliveries

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_NAME = 128


def _at(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "alert_rules",
        sa.Column("name", sa.String(_NAME), primary_key=True),
        sa.Column("definition", sa.JSON, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("created_by", sa.String(255), nullable=False),
        _at("created_at"),
        _at("updated_at"),
    )
    op.create_table(
        "alert_states",
        sa.Column("rule", sa.String(_NAME), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        _at("since"),
        sa.Column("value", sa.Float),
        sa.Column("severity", sa.String(16), nullable=False),
        _at("evaluated_at"),
        sa.Column("tickets", sa.JSON),
        sa.Column("version", sa.Integer, nullable=False),
    )
    op.create_table(
        "alert_history",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("rule", sa.String(_NAME), nullable=False),
        sa.Column("from_state", sa.String(16), nullable=False),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("value", sa.Float),
        sa.Column("severity", sa.String(16), nullable=False),
        _at("at"),
        sa.Column("details", sa.JSON, nullable=False),
    )
    op.create_index("ix_alert_history_rule_at", "alert_history", ["rule", "at"])
    op.create_table(
        "alert_deliveries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("history_id", sa.Integer, nullable=False),
        sa.Column("rule", sa.String(_NAME), nullable=False),
        sa.Column("notifier", sa.String(_NAME), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("http_status", sa.Integer),
        sa.Column("error", sa.String(1000)),
        sa.Column("reference", sa.String(255)),
        _at("at"),
    )
    op.create_index("ix_alert_deliveries_history_id", "alert_deliveries", ["history_id"])
    lease = op.create_table(
        "alert_lease",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(128)),
        _at("expires_at", nullable=True),
    )
    # The one lease row exists from the start: taking it is then always a conditional UPDATE,
    # which PostgreSQL and SQLite both settle for concurrent replicas.
    op.bulk_insert(lease, [{"name": "alerts.evaluator", "holder": None, "expires_at": None}])


def downgrade() -> None:
    op.drop_table("alert_lease")
    op.drop_index("ix_alert_deliveries_history_id", table_name="alert_deliveries")
    op.drop_table("alert_deliveries")
    op.drop_index("ix_alert_history_rule_at", table_name="alert_history")
    op.drop_table("alert_history")
    op.drop_table("alert_states")
    op.drop_table("alert_rules")
