"""governance: organizations, teams, principals, API keys, audit log; request attribution

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_NAME = 128


def _at(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "organizations",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(_NAME), nullable=False, unique=True),
        _at("created_at"),
    )
    op.create_table(
        "teams",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("org_id", sa.String(40), sa.ForeignKey("organizations.id"), nullable=False),
        sa.Column("name", sa.String(_NAME), nullable=False, unique=True),
        sa.Column("policy", sa.JSON, nullable=False),
        sa.Column("limits", sa.JSON, nullable=False),
        _at("created_at"),
    )
    op.create_table(
        "principals",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(_NAME), nullable=False, unique=True),
        sa.Column("email", sa.String(320)),
        sa.Column("org_id", sa.String(40), sa.ForeignKey("organizations.id"), nullable=False),
        sa.Column("team_id", sa.String(40), sa.ForeignKey("teams.id")),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("limits", sa.JSON, nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
        _at("created_at"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("principal_id", sa.String(40), sa.ForeignKey("principals.id"), nullable=False),
        sa.Column("name", sa.String(_NAME), nullable=False),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("environment", sa.String(16), nullable=False),
        sa.Column("role", sa.String(16)),
        sa.Column("models", sa.JSON),
        sa.Column("routes", sa.JSON, nullable=False),
        sa.Column("ip_allowlist", sa.JSON),
        sa.Column("limits", sa.JSON, nullable=False),
        _at("expires_at", nullable=True),
        _at("revoked_at", nullable=True),
        sa.Column("rotated_from", sa.String(40)),
        sa.Column("created_by", sa.String(_NAME), nullable=False),
        _at("created_at"),
    )
    op.create_index("ix_api_keys_principal", "api_keys", ["principal_id"])
    op.create_table(
        "governance_state",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
    )
    op.execute("INSERT INTO governance_state (id, version) VALUES (1, 0)")
    op.create_table(
        "audit_log",
        # 64-bit; SQLite autoincrements only an INTEGER PRIMARY KEY (itself 64-bit there).
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("id", sa.String(40), nullable=False, unique=True),
        _at("at"),
        sa.Column("actor", sa.String(_NAME), nullable=False),
        sa.Column("actor_kind", sa.String(16), nullable=False),
        sa.Column("key_id", sa.String(40)),
        sa.Column("team", sa.String(_NAME)),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(255)),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("source_ip", sa.String(64)),
        sa.Column("request_id", sa.String(64)),
        sa.Column("before", sa.JSON),
        sa.Column("after", sa.JSON),
        sa.Column("detail", sa.JSON),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.UniqueConstraint("hash", name="uq_audit_log_hash"),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_actor", "audit_log", ["actor"])
    op.create_index("ix_audit_log_action", "audit_log", ["action"])
    with op.batch_alter_table("request_records") as table:
        table.add_column(sa.Column("team", sa.String(_NAME)))
        table.add_column(sa.Column("key_id", sa.String(40)))
        table.add_column(sa.Column("environment", sa.String(16)))
        table.add_column(sa.Column("guardrails", sa.JSON))
    op.create_index("ix_request_records_team", "request_records", ["team"])


def downgrade() -> None:
    op.drop_index("ix_request_records_team", "request_records")
    with op.batch_alter_table("request_records") as table:
        for column in ("guardrails", "environment", "key_id", "team"):
            table.drop_column(column)
    for table_name in (
        "audit_log",
        "governance_state",
        "api_keys",
        "principals",
        "teams",
        "organizations",
    ):
        op.drop_table(table_name)
