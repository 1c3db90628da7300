"""The alert tables' queries: rules created over REST, states moved by compare-and-set,
history and deliveries. Synchronous; callers run them in worker threads."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from keel.errors import ConflictError, NotFoundError
from keel.monitoring.alerts_config import AlertRuleConfig
from keel.monitoring.alerts_series import utc
from keel.monitoring.alerts_tables import (
    alert_deliveries,
    alert_history,
    alert_rules,
    alert_states,
)
from keel.store import Database

__all__ = ["AlertStore", "StoredRule", "Transition"]

_RULES = alert_rules.c
_STATES = alert_states.c
_HISTORY = alert_history.c
_DELIVERIES = alert_deliveries.c


@dataclass(frozen=True, slots=True)
class StoredRule:
    rule: AlertRuleConfig
    enabled: bool
    created_by: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Transition:
    """A state change to make: the row it expects (`version`, None for a rule never seen) and
    what the state and the history become."""

    rule: str
    expected_version: int | None
    from_state: str
    to_state: str
    since: datetime
    value: float | None
    severity: str
    at: datetime
    details: dict[str, Any]


def _times(row: dict[str, Any], *names: str) -> dict[str, Any]:
    for name in names:
        if row.get(name) is not None:
            row[name] = utc(row[name])
    return row


class AlertStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    # -- rules created over REST ---------------------------------------------------------------

    def create_rule(self, rule: AlertRuleConfig, actor: str, now: datetime) -> StoredRule:
        row = {
            "name": rule.name,
            "definition": rule.document(),
            "enabled": rule.enabled,
            "created_by": actor,
            "created_at": now,
            "updated_at": now,
        }
        try:
            with self.database.engine.begin() as connection:
                connection.execute(insert(alert_rules).values(row))
        except IntegrityError:
            raise ConflictError(
                f"an alert rule named {rule.name!r} already exists", param="name"
            ) from None
        return StoredRule(rule, rule.enabled, actor, now)

    def rules(self) -> list[StoredRule]:
        with self.database.engine.connect() as connection:
            rows = connection.execute(select(alert_rules).order_by(_RULES.name)).all()
        return [_stored(row._mapping) for row in rows]

    def rule(self, name: str) -> StoredRule | None:
        with self.database.engine.connect() as connection:
            row = connection.execute(select(alert_rules).where(_RULES.name == name)).first()
        return _stored(row._mapping) if row is not None else None

    def delete_rule(self, name: str) -> None:
        with self.database.engine.begin() as connection:
            if not connection.execute(delete(alert_rules).where(_RULES.name == name)).rowcount:
                raise NotFoundError(f"alert rule {name!r} not found")
            connection.execute(delete(alert_states).where(_STATES.rule == name))

    def set_enabled(self, name: str, enabled: bool, now: datetime) -> StoredRule:
        with self.database.engine.begin() as connection:
            row = connection.execute(select(alert_rules).where(_RULES.name == name)).first()
            if row is None:
                raise NotFoundError(f"alert rule {name!r} not found")
            definition = {**row._mapping["definition"], "enabled": enabled}
            connection.execute(
                update(alert_rules)
                .where(_RULES.name == name)
                .values(enabled=enabled, definition=definition, updated_at=now)
            )
            row = connection.execute(select(alert_rules).where(_RULES.name == name)).one()
        return _stored(row._mapping)

    # -- states ---------------------------------------------------------------------------------

    def states(self) -> dict[str, dict[str, Any]]:
        with self.database.engine.connect() as connection:
            rows = connection.execute(select(alert_states)).all()
        return {row.rule: _times(dict(row._mapping), "since", "evaluated_at") for row in rows}

    def move(self, change: Transition) -> int | None:
        """Apply `change` if the state is still the one it was computed from; the history id,
        or None when another evaluator moved the rule first."""
        values = {
            "state": change.to_state,
            "since": change.since,
            "value": change.value,
            "severity": change.severity,
            "evaluated_at": change.at,
        }
        try:
            with self.database.engine.begin() as connection:
                if change.expected_version is None:
                    connection.execute(
                        insert(alert_states).values(rule=change.rule, version=1, **values)
                    )
                else:
                    moved = connection.execute(
                        update(alert_states)
                        .where(
                            _STATES.rule == change.rule,
                            _STATES.version == change.expected_version,
                        )
                        .values(version=change.expected_version + 1, **values)
                    ).rowcount
                    if moved != 1:
                        return None
                history_id: int = connection.execute(
                    insert(alert_history)
                    .values(
                        rule=change.rule,
                        from_state=change.from_state,
                        to_state=change.to_state,
                        value=change.value,
                        severity=change.severity,
                        at=change.at,
                        details=change.details,
                    )
                    .returning(_HISTORY.id)
                ).scalar_one()
        except IntegrityError:
            return None
        return history_id

    def first_seen(self, rule: str, value: float | None, severity: str, at: datetime) -> None:
        """A rule evaluated for the first time and not breached: inactive, with its value."""
        row = {
            "rule": rule,
            "state": "inactive",
            "since": at,
            "value": value,
            "severity": severity,
            "evaluated_at": at,
            "version": 1,
        }
        try:
            with self.database.engine.begin() as connection:
                connection.execute(insert(alert_states).values(row))
        except IntegrityError:
            pass  # another evaluator recorded it first

    def observed(self, rule: str, version: int, value: float | None, at: datetime) -> None:
        """The latest value of a rule whose state did not change."""
        with self.database.engine.begin() as connection:
            connection.execute(
                update(alert_states)
                .where(_STATES.rule == rule, _STATES.version == version)
                .values(value=value, evaluated_at=at)
            )

    def tickets(self, rule: str) -> dict[str, str]:
        with self.database.engine.connect() as connection:
            found = connection.execute(select(_STATES.tickets).where(_STATES.rule == rule)).scalar()
        return dict(found or {})

    def set_ticket(self, rule: str, notifier: str, reference: str) -> None:
        with self.database.engine.begin() as connection:
            found = connection.execute(select(_STATES.tickets).where(_STATES.rule == rule)).scalar()
            tickets = {**(found or {}), notifier: reference}
            connection.execute(
                update(alert_states).where(_STATES.rule == rule).values(tickets=tickets)
            )

    # -- history and deliveries ----------------------------------------------------------------

    def history(
        self, *, rule: str | None = None, limit: int = 100, before_id: int | None = None
    ) -> list[dict[str, Any]]:
        query = select(alert_history).order_by(_HISTORY.id.desc()).limit(limit)
        if rule is not None:
            query = query.where(_HISTORY.rule == rule)
        if before_id is not None:
            query = query.where(_HISTORY.id < before_id)
        with self.database.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [_times(dict(row._mapping), "at") for row in rows]

    def record_delivery(self, row: dict[str, Any]) -> None:
        with self.database.engine.begin() as connection:
            connection.execute(insert(alert_deliveries).values(row))

    def deliveries(
        self,
        *,
        rule: str | None = None,
        history_id: int | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[dict[str, Any]]:
        query = select(alert_deliveries).order_by(_DELIVERIES.id.desc()).limit(limit)
        if rule is not None:
            query = query.where(_DELIVERIES.rule == rule)
        if history_id is not None:
            query = query.where(_DELIVERIES.history_id == history_id)
        if before_id is not None:
            query = query.where(_DELIVERIES.id < before_id)
        with self.database.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [_times(dict(row._mapping), "at") for row in rows]


def _stored(row: Any) -> StoredRule:
    rule = AlertRuleConfig.model_validate(row["definition"])
    return StoredRule(rule, bool(row["enabled"]), row["created_by"], utc(row["created_at"]))
