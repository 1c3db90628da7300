"""Governance tables on Keel's one `metadata` (migration 0004 creates them).

Organizations hold teams; teams hold users and service accounts (principals); principals hold
API keys. Keys are stored as a SHA-256 of the secret plus a short visible prefix: the secret
itself is shown once, at creation, and never stored. Nothing is deleted: revoking and
disabling set a timestamp or a flag, so the audit trail keeps pointing at real rows.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    UniqueConstraint,
)

from keel.store.schema import metadata

__all__ = [
    "api_keys",
    "audit_log",
    "governance_state",
    "organizations",
    "principals",
    "teams",
]

NAME = 128

organizations = Table(
    "organizations",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(NAME), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

teams = Table(
    "teams",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(40), ForeignKey("organizations.id"), nullable=False),
    Column("name", String(NAME), nullable=False, unique=True),
    # {"allowed_regions": [...] | null}
    Column("policy", JSON, nullable=False),
    # {"rpm":..,"tpm":..,"tokens_per_day":..,"usd_per_day":..,"usd_per_month":..}
    Column("limits", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

principals = Table(
    "principals",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("kind", String(16), nullable=False),  # user | service_account
    Column("name", String(NAME), nullable=False, unique=True),
    Column("email", String(320)),
    Column("org_id", String(40), ForeignKey("organizations.id"), nullable=False),
    Column("team_id", String(40), ForeignKey("teams.id")),
    Column("role", String(16), nullable=False),
    Column("limits", JSON, nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("principal_id", String(40), ForeignKey("principals.id"), nullable=False),
    Column("name", String(NAME), nullable=False),
    Column("prefix", String(32), nullable=False),
    Column("secret_hash", String(64), nullable=False, unique=True),
    Column("environment", String(16), nullable=False),
    Column("role", String(16)),  # narrower than the principal's role, or null for the same
    Column("models", JSON),  # null: every model
    Column("routes", JSON, nullable=False),  # ["inference", "management"]
    Column("ip_allowlist", JSON),  # null: anywhere; else CIDR strings
    Column("limits", JSON, nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    Column("rotated_from", String(40)),
    Column("created_by", String(NAME), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_api_keys_principal", "principal_id"),
)

# One row whose version grows with every governance write: replicas poll it to know when
# their in-memory snapshot of keys and policies is stale.
governance_state = Table(
    "governance_state",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", Integer, nullable=False),
)

audit_log = Table(
    "audit_log",
    metadata,
    # 64-bit; SQLite autoincrements only an INTEGER PRIMARY KEY (itself 64-bit there).
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("id", String(40), nullable=False, unique=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(NAME), nullable=False),
    Column("actor_kind", String(16), nullable=False),
    Column("key_id", String(40)),
    Column("team", String(NAME)),
    Column("action", String(64), nullable=False),
    Column("target", String(255)),
    Column("outcome", String(32), nullable=False),
    Column("source_ip", String(64)),
    Column("request_id", String(64)),
    Column("before", JSON),
    Column("after", JSON),
    Column("detail", JSON),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_audit_log_at", "at"),
    Index("ix_audit_log_actor", "actor"),
    Index("ix_audit_log_action", "action"),
    UniqueConstraint("hash", name="uq_audit_log_hash"),
)
