"""Alert tables, on Keel's one `metadata` (migration 0008 creates them).

- `alert_rules`: rules created over REST (keel.yaml rules are never stored);
- `alert_states`: each rule's current state; `version` makes every change a compare-and-set,
  so two evaluators can never both move a rule (and both notify);
- `alert_history`: every transition, append-only;
- `alert_deliveries`: each notifier's outcome for a transition;
- `alert_lease`: which replica evaluates, until when (when no Redis is configured).
"""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Column, DateTime, Float, Index, Integer, String, Table

from keel.store.schema import metadata

__all__ = [
    "LEASE_NAME",
    "alert_deliveries",
    "alert_history",
    "alert_lease",
    "alert_rules",
    "alert_states",
]

_NAME = 128
LEASE_NAME = "alerts.evaluator"

alert_rules = Table(
    "alert_rules",
    metadata,
    Column("name", String(_NAME), primary_key=True),
    Column("definition", JSON, nullable=False),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("created_by", String(255), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

alert_states = Table(
    "alert_states",
    metadata,
    Column("rule", String(_NAME), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("since", DateTime(timezone=True), nullable=False),
    Column("value", Float),
    Column("severity", String(16), nullable=False),
    Column("evaluated_at", DateTime(timezone=True), nullable=False),
    Column("tickets", JSON),
    Column("version", Integer, nullable=False),
)

alert_history = Table(
    "alert_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("rule", String(_NAME), nullable=False),
    Column("from_state", String(16), nullable=False),
    Column("to_state", String(16), nullable=False),
    Column("value", Float),
    Column("severity", String(16), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("details", JSON, nullable=False),
    Index("ix_alert_history_rule_at", "rule", "at"),
)

alert_deliveries = Table(
    "alert_deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("history_id", Integer, nullable=False),
    Column("rule", String(_NAME), nullable=False),
    Column("notifier", String(_NAME), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("http_status", Integer),
    Column("error", String(1000)),
    Column("reference", String(255)),
    Column("at", DateTime(timezone=True), nullable=False),
    Index("ix_alert_deliveries_history_id", "history_id"),
)

alert_lease = Table(
    "alert_lease",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(128)),
    Column("expires_at", DateTime(timezone=True)),
)
