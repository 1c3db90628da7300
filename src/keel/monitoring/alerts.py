"""Alert evaluation: rules over shared series, states pending → firing → resolved, and the
notifications each transition sends.

`AlertEvaluator.evaluate_once(now=...)` is one round: take (or renew) the lease, compute every
enabled rule, move states by compare-and-set, then hand each firing or resolution to its
notifiers as background deliveries. The schedule (`alerts.evaluation_interval_s`) only calls
it; tests call it themselves with the time they choose.
"""

from __future__ import annotations

import asyncio
import logging
import math
import operator
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp

from keel.errors import KeelError
from keel.monitoring.alerts_config import AlertRuleConfig, AlertsConfig
from keel.monitoring.alerts_lease import EvaluatorLease
from keel.monitoring.alerts_series import series_values
from keel.monitoring.alerts_store import AlertStore, Transition
from keel.monitoring.notifiers import Notification, Notifier, Recipients, deliver
from keel.registry import Registry
from keel.store import Database

__all__ = ["AlertEvaluator", "EvaluationReport", "RuleCheck", "check_rule"]

log = logging.getLogger("keel.alerts")

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
# Deliveries still running when the server stops get this long to finish.
_STOP_GRACE_S = 5.0


@dataclass(frozen=True, slots=True)
class RuleCheck:
    """One rule at one time: the metric's value in the latest window, what the condition
    compares (the value, its relative change or its z-score) and whether it holds."""

    value: float | None
    observed: float | None
    breached: bool


@dataclass(slots=True)
class EvaluationReport:
    leader: bool
    evaluated: int = 0
    transitions: list[dict[str, Any]] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


def _windows(rule: AlertRuleConfig) -> int:
    if rule.condition == "rate_of_change":
        return 2
    if rule.condition == "anomaly":
        return rule.baseline_windows + 1
    return 1


def _observed(rule: AlertRuleConfig, values: list[float | None]) -> float | None:
    current = values[-1]
    if current is None or rule.condition == "threshold":
        return current
    if rule.condition == "rate_of_change":
        previous = values[-2] if len(values) > 1 else None
        if previous is None or previous == 0:
            return None
        return (current - previous) / abs(previous)
    baseline = [value for value in values[:-1] if value is not None]
    if len(baseline) < 2:
        return None
    mean = statistics.fmean(baseline)
    # A perfectly flat baseline would divide by zero: any departure from it is then a very
    # large, but finite, z-score.
    spread = max(statistics.stdev(baseline), 1e-9 * max(1.0, abs(mean)))
    return (current - mean) / spread


def check_rule(database: Database, rule: AlertRuleConfig, now: datetime) -> RuleCheck:
    values = series_values(database, rule, end=now, windows=_windows(rule))
    observed = _observed(rule, values)
    breached = (
        observed is not None and math.isfinite(observed) and _OPS[rule.op](observed, rule.threshold)
    )
    return RuleCheck(values[-1], observed, breached)


def _next_state(current: str, since: datetime, breached: bool, for_s: float, now: datetime) -> str:
    if breached:
        if current == "firing":
            return "firing"
        if current == "pending":
            return "firing" if (now - since).total_seconds() >= for_s else "pending"
        return "firing" if for_s <= 0 else "pending"
    if current == "firing":
        return "resolved"
    if current == "pending":
        return "inactive"
    return current


@dataclass(slots=True)
class _Pending:
    notification: Notification
    notifiers: list[str]


class AlertEvaluator:
    def __init__(
        self,
        database: Database,
        config: AlertsConfig,
        *,
        http: aiohttp.ClientSession,
        lease: EvaluatorLease,
        notifiers: dict[str, Notifier],
        registry: Registry | None = None,
    ) -> None:
        self.database = database
        self.config = config
        self.store = AlertStore(database)
        self.lease = lease
        self.notifiers = notifiers
        self._http = http
        self._registry = registry
        self._task: asyncio.Task[None] | None = None
        self._deliveries: set[asyncio.Task[None]] = set()
        self._delivery_locks: dict[tuple[str, str], asyncio.Lock] = {}

    # -- the schedule ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="keel-alert-evaluator")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.config.evaluation_interval_s)
            try:
                await self.evaluate_once()
            except Exception:
                log.exception("alert evaluation failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._deliveries:
            _, late = await asyncio.wait(set(self._deliveries), timeout=_STOP_GRACE_S)
            for task in late:
                task.cancel()
        await self.lease.release()
        await self.lease.aclose()

    async def settle(self) -> None:
        """Until every delivery started so far has finished (and been recorded)."""
        while self._deliveries:
            await asyncio.gather(*set(self._deliveries), return_exceptions=True)

    # -- one round -------------------------------------------------------------------------------

    def active_rules(self) -> list[AlertRuleConfig]:
        configured = [rule for rule in self.config.rules if rule.enabled]
        taken = {rule.name for rule in self.config.rules}
        stored = [s.rule for s in self.store.rules() if s.enabled and s.rule.name not in taken]
        return configured + stored

    async def evaluate_once(self, now: datetime | None = None) -> EvaluationReport:
        """Evaluate every enabled rule at `now` (default: the current time) if this replica
        holds the lease; deliveries run in the background (`settle` waits for them)."""
        moment = (now or datetime.now(UTC)).astimezone(UTC)
        if not await self.lease.acquire():
            return EvaluationReport(leader=False)
        report, pending = await asyncio.to_thread(self._evaluate, moment)
        for item in pending:
            for name in item.notifiers:
                task = asyncio.create_task(self._deliver(self.notifiers[name], item.notification))
                self._deliveries.add(task)
                task.add_done_callback(self._deliveries.discard)
        return report

    def _evaluate(self, now: datetime) -> tuple[EvaluationReport, list[_Pending]]:
        report = EvaluationReport(leader=True)
        pending: list[_Pending] = []
        states = self.store.states()
        for rule in self.active_rules():
            try:
                check = check_rule(self.database, rule, now)
            except Exception as exc:
                # One broken rule (a missing quality module, a database hiccup) must not stop
                # the others.
                log.exception("alert rule %s could not be evaluated", rule.name)
                report.errors[rule.name] = f"{type(exc).__name__}: {exc}"[:300]
                continue
            report.evaluated += 1
            state = states.get(rule.name)
            current = state["state"] if state else "inactive"
            since = state["since"] if state else now
            target = _next_state(current, since, check.breached, rule.for_, now)
            if target == current:
                if state is not None:
                    self.store.observed(rule.name, state["version"], check.value, now)
                else:
                    self.store.first_seen(rule.name, check.value, rule.severity, now)
                continue
            change = Transition(
                rule=rule.name,
                expected_version=state["version"] if state else None,
                from_state=current,
                to_state=target,
                since=now,
                value=check.value,
                severity=rule.severity,
                at=now,
                details=_details(rule, check),
            )
            history_id = self.store.move(change)
            if history_id is None:
                continue  # another evaluator moved it first, and notifies
            report.transitions.append(
                {"rule": rule.name, "from": current, "to": target, "history_id": history_id}
            )
            if target in ("firing", "resolved"):
                kind: Literal["firing", "resolved"] = "firing" if target == "firing" else "resolved"
                notification = self._notification(rule, check, history_id, kind, since, now)
                names = rule.notifiers if rule.notifiers is not None else list(self.notifiers)
                pending.append(_Pending(notification, [n for n in names if n in self.notifiers]))
        return report, pending

    def _notification(
        self,
        rule: AlertRuleConfig,
        check: RuleCheck,
        history_id: int,
        kind: Literal["firing", "resolved"],
        since: datetime,
        now: datetime,
    ) -> Notification:
        recipients, model_version = self._recipients(rule)
        return Notification(
            history_id=history_id,
            rule=rule.name,
            kind=kind,
            severity=rule.severity,
            metric=rule.metric,
            condition=rule.condition,
            op=rule.op,
            threshold=rule.threshold,
            value=check.value,
            observed=check.observed,
            window_s=rule.window,
            for_s=rule.for_,
            filters=_filters(rule),
            since=since if kind == "resolved" else now,
            at=now,
            description=rule.description,
            model_version=model_version,
            recipients=recipients,
        )

    def _recipients(self, rule: AlertRuleConfig) -> tuple[Recipients, str | None]:
        """The owners on the registry card of the rule's model (`team:<name>` owners are
        teams), and the rule's own recipients."""
        owners = list(rule.recipients)
        model_version = None
        if rule.model is not None and self._registry is not None:
            try:
                record = self._registry_record(rule.model)
            except Exception:
                log.exception("alert rule %s: could not read the registry", rule.name)
                record = None
            if record is not None:
                owners = [*record.card.owners, *owners]
                model_version = record.reference
        people = [owner for owner in owners if not owner.startswith("team:")]
        teams = [owner[5:] for owner in owners if owner.startswith("team:")]
        return Recipients(tuple(dict.fromkeys(people)), tuple(dict.fromkeys(teams))), model_version

    def _registry_record(self, model: str) -> Any:
        assert self._registry is not None
        try:
            return self._registry.resolve(model)
        except KeelError:
            pass
        # The rule may name the gateway model a registry entry is bound to.
        for name, snapshot in sorted(self._registry.snapshot().items()):
            if snapshot.archived:
                continue
            if any(v.gateway_model == model for v in snapshot.versions.values()):
                return self._registry.resolve(name)
        return None

    # -- deliveries ------------------------------------------------------------------------------

    async def _deliver(self, notifier: Notifier, notification: Notification) -> None:
        # One delivery at a time per rule and notifier: a resolution must not overtake the
        # firing whose Jira issue it comments on.
        lock = self._delivery_locks.setdefault((notification.rule, notifier.name), asyncio.Lock())
        try:
            async with lock:
                ticket = None
                if notifier.kind == "jira":
                    tickets = await asyncio.to_thread(self.store.tickets, notification.rule)
                    ticket = tickets.get(notifier.name)
                result = await deliver(notifier, self._http, notification, ticket)
                if result.reference is not None and result.reference != ticket:
                    await asyncio.to_thread(
                        self.store.set_ticket, notification.rule, notifier.name, result.reference
                    )
                row = {
                    "history_id": notification.history_id,
                    "rule": notification.rule,
                    "notifier": notifier.name,
                    "kind": notifier.kind,
                    "status": result.status,
                    "attempts": result.attempts,
                    "http_status": result.http_status,
                    "error": result.error,
                    "reference": result.reference,
                    "at": datetime.now(UTC),
                }
                await asyncio.to_thread(self.store.record_delivery, row)
                if result.status == "failed":
                    log.warning(
                        "alert %s: notifier %s failed after %d attempt(s): %s",
                        notification.rule,
                        notifier.name,
                        result.attempts,
                        result.error,
                    )
        except Exception:
            log.exception("alert %s: delivery to %s failed", notification.rule, notifier.name)


def _filters(rule: AlertRuleConfig) -> dict[str, str]:
    found = {
        "model": rule.model,
        "deployment": rule.deployment,
        "team": rule.team,
        "environment": rule.environment,
    }
    return {name: value for name, value in found.items() if value is not None}


def _details(rule: AlertRuleConfig, check: RuleCheck) -> dict[str, Any]:
    return {
        "metric": rule.metric,
        "condition": rule.condition,
        "op": rule.op,
        "threshold": rule.threshold,
        "observed": check.observed,
        "window_s": rule.window,
        "for_s": rule.for_,
        "filters": _filters(rule),
    }
