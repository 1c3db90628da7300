"""What the alert routes call: rules from keel.yaml and from REST side by side, current
states, history and deliveries; and `start_alerts`, which builds the evaluator for the
server's lifespan."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import aiohttp

from keel.config import Settings
from keel.errors import ConflictError, InvalidRequestError, NotFoundError
from keel.monitoring.alerts import AlertEvaluator
from keel.monitoring.alerts_config import AlertRuleConfig
from keel.monitoring.alerts_lease import DatabaseLease, EvaluatorLease, RedisLease, new_holder
from keel.monitoring.alerts_store import StoredRule
from keel.monitoring.notifiers import build_notifiers
from keel.registry import Registry
from keel.store import Database

__all__ = ["Alerts", "start_alerts"]

_IDLE = "inactive"


class Alerts:
    """The alerting part of a running server."""

    def __init__(self, evaluator: AlertEvaluator) -> None:
        self.evaluator = evaluator
        self.store = evaluator.store
        self.config = evaluator.config

    async def stop(self) -> None:
        await self.evaluator.stop()

    # -- rules -----------------------------------------------------------------------------------

    def _configured(self) -> dict[str, AlertRuleConfig]:
        return {rule.name: rule for rule in self.config.rules}

    def _view(
        self, rule: AlertRuleConfig, source: str, stored: StoredRule | None
    ) -> dict[str, Any]:
        return {
            **rule.document(),
            "enabled": stored.enabled if stored is not None else rule.enabled,
            "source": source,
            "created_by": stored.created_by if stored is not None else None,
            "created_at": stored.created_at if stored is not None else None,
        }

    def list_rules(self) -> list[dict[str, Any]]:
        configured = self._configured()
        views = [self._view(rule, "config", None) for rule in configured.values()]
        views += [
            self._view(stored.rule, "api", stored)
            for stored in self.store.rules()
            if stored.rule.name not in configured
        ]
        return sorted(views, key=lambda view: str(view["name"]))

    def get_rule(self, name: str) -> dict[str, Any]:
        configured = self._configured().get(name)
        if configured is not None:
            return self._view(configured, "config", None)
        stored = self.store.rule(name)
        if stored is None:
            raise NotFoundError(f"alert rule {name!r} not found")
        return self._view(stored.rule, "api", stored)

    def create_rule(self, rule: AlertRuleConfig, actor: str) -> dict[str, Any]:
        if rule.name in self._configured():
            raise ConflictError(
                f"an alert rule named {rule.name!r} is defined in the configuration file",
                param="name",
            )
        known = set(self.evaluator.notifiers)
        unknown = sorted(set(rule.notifiers or ()) - known)
        if unknown:
            raise InvalidRequestError(
                f"notifiers: unknown notifier(s) {', '.join(unknown)}; configured: "
                f"{', '.join(sorted(known)) or '(none)'}",
                param="notifiers",
            )
        stored = self.store.create_rule(rule, actor, datetime.now(UTC))
        return self._view(stored.rule, "api", stored)

    def _not_configured(self, name: str, doing: str) -> None:
        if name in self._configured():
            raise ConflictError(
                f"alert rule {name!r} is defined in the configuration file; {doing} it there"
            )

    def delete_rule(self, name: str) -> None:
        self._not_configured(name, "remove")
        self.store.delete_rule(name)

    def set_enabled(self, name: str, enabled: bool) -> dict[str, Any]:
        self._not_configured(name, "enable or disable")
        stored = self.store.set_enabled(name, enabled, datetime.now(UTC))
        return self._view(stored.rule, "api", stored)

    # -- states, history, deliveries -------------------------------------------------------------

    def current(self, state: str | None = None) -> list[dict[str, Any]]:
        states = self.store.states()
        found = []
        for rule in self.list_rules():
            row = states.get(rule["name"])
            entry = {
                "rule": rule["name"],
                "state": row["state"] if row else _IDLE,
                "since": row["since"] if row else None,
                "value": row["value"] if row else None,
                "severity": rule["severity"],
                "metric": rule["metric"],
                "enabled": rule["enabled"],
                "evaluated_at": row["evaluated_at"] if row else None,
                "tickets": (row["tickets"] or {}) if row else {},
            }
            if state is None or entry["state"] == state:
                found.append(entry)
        return found

    def history(
        self, *, rule: str | None, limit: int, before_id: int | None
    ) -> list[dict[str, Any]]:
        return self.store.history(rule=rule, limit=limit, before_id=before_id)

    def deliveries(
        self, *, rule: str | None, history_id: int | None, limit: int, before_id: int | None
    ) -> list[dict[str, Any]]:
        return self.store.deliveries(
            rule=rule, history_id=history_id, limit=limit, before_id=before_id
        )


async def start_alerts(
    settings: Settings,
    database: Database,
    http: aiohttp.ClientSession,
    registry: Registry | None,
) -> Alerts:
    """The evaluator, its lease (Redis when `redis_url` is set, else the database) and its
    notifiers; the schedule runs unless `alerts.enabled` is false."""
    config = settings.alerts
    notifiers = build_notifiers(list(config.notifiers))
    holder = new_holder()
    lease: EvaluatorLease
    if settings.redis_url:
        key = f"{settings.redis_prefix}alerts:evaluator"
        lease = RedisLease(settings.redis_url, key, ttl_s=config.lease_ttl_s, holder=holder)
    else:
        lease = DatabaseLease(database, ttl_s=config.lease_ttl_s, holder=holder)
    evaluator = AlertEvaluator(
        database, config, http=http, lease=lease, notifiers=notifiers, registry=registry
    )
    if config.enabled:
        evaluator.start()
    return Alerts(evaluator)
