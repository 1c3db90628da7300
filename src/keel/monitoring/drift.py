"""Drift reports: a model's current traffic against a reference, computed, stored, charted.

The reference is either the registry version's benchmark run (the requests sent with the
run's id in the `x-keel-run-id` header, linked by the version's evaluation `run_id`) or a
window of the model's own production traffic. Each check states its method, threshold and
verdict; a report is drifted when any check is. `latest_drift` is the stable entry point for
alerting.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import func, insert, or_, select

from keel.errors import InvalidRequestError, NotFoundError
from keel.monitoring.drift_data import Side, Target, load_side
from keel.monitoring.drift_tables import drift_reports
from keel.store.database import Database

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from keel.monitoring.drift_config import DriftConfig
    from keel.registry import Registry

__all__ = [
    "DriftMonitor",
    "Reference",
    "drift_history",
    "latest_drift",
    "parse_window",
]

log = logging.getLogger("keel.monitoring")

Reference = Literal["benchmark", "window"]

# The thresholds, and why, are in docs/monitoring.md ("Drift").
PSI_THRESHOLD = 0.2  # "significant shift" by the usual PSI reading (<0.1 none, 0.1-0.2 some)
PSI_P_THRESHOLD = 0.01  # and beyond sampling noise: small windows inflate PSI
KS_P_THRESHOLD = 0.01
KS_MIN_D = 0.1  # at 100k records any gap is "significant"; a shift must also be visible
MMD_P_THRESHOLD = 0.01
RATE_P_THRESHOLD = 0.01
RATE_MIN_CHANGE = 0.05  # five percentage points
ACCURACY_MAX_DROP = 0.05
MIN_SAMPLES = 20  # below this a check says "insufficient data" rather than guess
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_MAX_DURATION = timedelta(days=3660)


def parse_duration(text: str, param: str) -> timedelta:
    found = _DURATION.fullmatch(text.strip().lower())
    if not found:
        raise InvalidRequestError(
            f"{param}: {text[:64]!r} is not a duration like 30m, 24h or 7d, nor a "
            "START/END range of ISO-8601 times",
            param=param,
        )
    span = timedelta(seconds=float(found.group(1)) * _UNITS[found.group(2)])
    if span <= timedelta(0) or span > _MAX_DURATION:
        raise InvalidRequestError(
            f"{param}: {text!r} must be above 0 and at most 10 years", param=param
        )
    return span


def _time(text: str, param: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidRequestError(
            f"{param}: {text[:64]!r} is not an ISO-8601 time (e.g. 2026-03-01T12:00:00Z)",
            param=param,
        ) from None


def parse_window(text: str, *, end: datetime, param: str) -> tuple[datetime, datetime]:
    """A duration ending at `end` ("24h"), or an explicit "START/END" range."""
    if "/" in text:
        first, _, second = text.partition("/")
        start, stop = _time(first, param), _time(second, param)
        if start >= stop:
            raise InvalidRequestError(f"{param}: the start must come before the end", param=param)
        return start, stop
    return end - parse_duration(text, param), end


@dataclass(frozen=True, slots=True)
class _Benchmark:
    version: str  # "name@3"
    run_id: str
    accuracy: float | None


class DriftMonitor:
    """Computes and stores drift reports; keeps the latest per model for the gauges.
    Synchronous: the server calls it through `asyncio.to_thread`."""

    def __init__(self, database: Database, registry: Registry, config: DriftConfig) -> None:
        self._database = database
        self._registry = registry
        self._config = config
        self._latest: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def load_latest(self) -> None:
        """The newest report of every model, for the gauges after a restart."""
        reports = drift_reports.c
        newest = (
            select(reports.model, func.max(reports.created_at).label("at"))
            .group_by(reports.model)
            .subquery()
        )
        query = select(drift_reports).join(
            newest, (reports.model == newest.c.model) & (reports.created_at == newest.c.at)
        )
        with self._database.engine.connect() as conn:
            rows = [_report_of(row._mapping) for row in conn.execute(query)]
        with self._lock:
            for report in rows:
                self._latest[report["model"]] = report

    def latest_reports(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._latest.values())

    def compute(
        self,
        target_text: str,
        *,
        window: str = "24h",
        reference: Reference = "window",
        reference_window: str | None = None,
        until: datetime | None = None,
        created_by: str | None = None,
    ) -> dict[str, Any]:
        if reference not in ("benchmark", "window"):
            raise InvalidRequestError(
                f"reference: {reference!r} is not benchmark or window", param="reference"
            )
        now = datetime.now(UTC)
        target, registry_version = self._target(target_text, needs_version=reference == "benchmark")
        start, end = parse_window(window, end=until or now, param="window")
        sample, seed = self._config.embedding_sample, 0
        benchmark: _Benchmark | None = None
        ref_start: datetime | None = None
        ref_end: datetime | None = None
        with self._database.engine.connect() as conn:
            current = load_side(conn, target, start=start, end=end, sample=sample, seed=seed)
            if reference == "benchmark":
                assert registry_version is not None
                benchmark = self._benchmark(registry_version)
                base = load_side(conn, target, run_id=benchmark.run_id, sample=sample, seed=seed)
            else:
                ref_start, ref_end = (
                    parse_window(reference_window, end=start, param="reference_window")
                    if reference_window
                    else (start - (end - start), start)
                )
                base = load_side(
                    conn, target, start=ref_start, end=ref_end, sample=sample, seed=seed
                )
        if current.count == 0 and base.count == 0:
            raise NotFoundError(
                f"no requests recorded for {target_text!r} in the window or its reference",
                param="name",
            )
        checks = _token_checks(base, current) + _rate_checks(base, current)
        checks += _embedding_checks(base, current, self._config.permutations)
        reference_span = (ref_start, ref_end) if ref_start and ref_end else None
        checks.append(
            self._accuracy_check(target_text, target, benchmark, (start, end), reference_span)
        )
        metrics: dict[str, float | None] = {}
        for check in checks:
            metrics.update(check.pop("metrics"))
        report = {
            "id": f"drift_{uuid.uuid4().hex}",
            "created_at": now,
            "model": target.model,
            "target": target_text,
            "registry_version": registry_version,
            "reference": reference,
            "window_start": start,
            "window_end": end,
            "reference_start": ref_start,
            "reference_end": ref_end,
            "run_id": benchmark.run_id if benchmark else None,
            "current_count": current.count,
            "reference_count": base.count,
            "drifted": any(check["drifted"] for check in checks),
            "metrics": metrics,
            "checks": checks,
            "created_by": created_by,
        }
        with self._database.engine.begin() as conn:
            conn.execute(insert(drift_reports), [report])
        stored = _report_of(report)
        with self._lock:
            self._latest[target.model] = stored
        return stored

    def _target(self, text: str, *, needs_version: bool) -> tuple[Target, str | None]:
        text = text.strip()
        name, at, ref = text.partition("@")
        if not name or (at and not ref) or len(text) > 255:
            raise InvalidRequestError(
                f"model: {text[:64]!r} is not MODEL or MODEL@alias", param="name"
            )
        try:
            record = self._registry.resolve(text)
        except NotFoundError:
            if at:
                raise
            if needs_version:
                raise InvalidRequestError(
                    f"model: {name!r} is not in the registry, so it has no benchmark; use "
                    "reference=window",
                    param="reference",
                ) from None
            return Target(model=name), None
        pinned = record.reference if at else None
        return Target(model=name, version=pinned, registry=True), record.reference

    def _benchmark(self, version: str) -> _Benchmark:
        name, _, number = version.partition("@")
        record = self._registry.version(name, int(number))
        linked = [e for e in record.evaluations if e.run_id]
        if not linked:
            raise InvalidRequestError(
                f"{version} has no evaluation linked to a benchmark run: record one with a "
                "run_id, and send the run's requests with the x-keel-run-id header",
                param="reference",
            )
        latest = max(linked, key=lambda e: e.created_at)
        accuracies = [e for e in record.evaluations if e.metric == "accuracy"]
        same_run = [e for e in accuracies if e.run_id == latest.run_id]
        chosen = max(same_run or accuracies, key=lambda e: e.created_at) if accuracies else None
        assert latest.run_id is not None
        return _Benchmark(version, latest.run_id, chosen.value if chosen else None)

    def _accuracy_check(
        self,
        target_text: str,
        target: Target,
        benchmark: _Benchmark | None,
        span: tuple[datetime, datetime],
        reference_span: tuple[datetime, datetime] | None,
    ) -> dict[str, Any]:
        check = _check(
            "accuracy", "accuracy from feedback, drop vs the reference", ACCURACY_MAX_DROP
        )
        current, current_n = _feedback_accuracy(self._database, target_text, target, span)
        if benchmark is not None:
            reference, reference_n = benchmark.accuracy, None
        elif reference_span is not None:
            reference, reference_n = _feedback_accuracy(
                self._database, target_text, target, reference_span
            )
        else:
            reference, reference_n = None, 0
        check["metrics"] = {"accuracy": current, "accuracy_reference": reference}
        if reference is None:
            check["note"] = (
                "the benchmark has no accuracy evaluation"
                if benchmark is not None
                else "no feedback in the reference window"
            )
        elif (
            current is None
            or current_n < MIN_SAMPLES
            or (reference_n is not None and reference_n < MIN_SAMPLES)
        ):
            check["note"] = _too_few(reference_n or 0, current_n) + " (feedback)"
        else:
            check["statistic"] = reference - current
            check["drifted"] = reference - current > ACCURACY_MAX_DROP
        return check


def _feedback_accuracy(
    database: Database, target_text: str, target: Target, span: tuple[datetime, datetime]
) -> tuple[float | None, int]:
    """(accuracy, feedback count) over `span`, from the feedback quality aggregates; feedback
    is kept by the model as the client asked for it, so both spellings are summed."""
    try:
        from keel.monitoring.quality import quality_summary
    except ImportError:
        return None, 0
    start, end = span
    correct = 0.0
    count = 0
    for model in dict.fromkeys([target.model, target_text]):
        try:
            summary = quality_summary(
                database,
                model=model,
                window_s=(end - start).total_seconds(),
                registry_version=target.version,
                end=end,
            )
        except Exception:
            log.exception("reading feedback accuracy for %s failed", model)
            continue
        accuracy, n = summary.get("accuracy"), summary.get("count") or 0
        if isinstance(accuracy, int | float) and isinstance(n, int) and n > 0:
            correct += accuracy * n
            count += n
    return (correct / count if count else None), count


def _check(name: str, method: str, threshold: float | str) -> dict[str, Any]:
    return {
        "name": name,
        "method": method,
        "threshold": threshold,
        "statistic": None,
        "p_value": None,
        "drifted": False,
        "note": None,
    }


def _token_checks(base: Side, current: Side) -> list[dict[str, Any]]:
    from keel.monitoring.drift_stats import ks_test, psi_test

    checks = []
    for label, ref, cur in (
        ("input_tokens", base.input_tokens, current.input_tokens),
        ("output_tokens", base.output_tokens, current.output_tokens),
    ):
        by_psi = _check(
            f"{label}.psi",
            "PSI over the reference's deciles",
            f">{PSI_THRESHOLD}, p<{PSI_P_THRESHOLD}",
        )
        by_ks = _check(
            f"{label}.ks", "two-sample Kolmogorov-Smirnov", f"p<{KS_P_THRESHOLD}, D>={KS_MIN_D}"
        )
        by_psi["metrics"] = {f"psi_{label}": None, f"psi_{label}_p": None}
        by_ks["metrics"] = {f"ks_{label}_d": None, f"ks_{label}_p": None}
        if min(len(ref), len(cur)) < MIN_SAMPLES:
            by_psi["note"] = by_ks["note"] = _too_few(len(ref), len(cur))
        else:
            value, psi_p = psi_test(ref, cur)
            d, p = ks_test(ref, cur)
            by_psi.update(
                statistic=value,
                p_value=psi_p,
                drifted=value > PSI_THRESHOLD and psi_p < PSI_P_THRESHOLD,
            )
            by_ks.update(statistic=d, p_value=p, drifted=p < KS_P_THRESHOLD and d >= KS_MIN_D)
            by_psi["metrics"] = {f"psi_{label}": value, f"psi_{label}_p": psi_p}
            by_ks["metrics"] = {f"ks_{label}_d": d, f"ks_{label}_p": p}
        checks += [by_psi, by_ks]
    return checks


def _rate_checks(base: Side, current: Side) -> list[dict[str, Any]]:
    from keel.monitoring.drift_stats import two_proportions

    checks = []
    threshold = f"p<{RATE_P_THRESHOLD}, change>={RATE_MIN_CHANGE}"
    for label, ref_hits, cur_hits in (
        ("error_rate", base.errors, current.errors),
        ("refusal_rate", base.refusals, current.refusals),
        ("pii_rate", base.pii_hits, current.pii_hits),
    ):
        check = _check(label, "two-proportion z-test", threshold)
        ref_rate = ref_hits / base.count if base.count else None
        cur_rate = cur_hits / current.count if current.count else None
        check["metrics"] = {label: cur_rate, f"{label}_reference": ref_rate}
        if min(base.count, current.count) < MIN_SAMPLES or ref_rate is None or cur_rate is None:
            check["note"] = _too_few(base.count, current.count)
        else:
            p = two_proportions(ref_hits, base.count, cur_hits, current.count)
            change = cur_rate - ref_rate
            check.update(
                statistic=change,
                p_value=p,
                drifted=p < RATE_P_THRESHOLD and abs(change) >= RATE_MIN_CHANGE,
            )
        checks.append(check)
    return checks


def _embedding_checks(base: Side, current: Side, permutations: int) -> list[dict[str, Any]]:
    from keel.monitoring.drift_stats import mean_distance, mmd_test

    checks = []
    for label, ref, cur in (
        ("input", base.input_embeddings, current.input_embeddings),
        ("output", base.output_embeddings, current.output_embeddings),
    ):
        check = _check(
            f"embedding_{label}",
            f"RBF-kernel MMD, {permutations}-permutation test",
            f"p<{MMD_P_THRESHOLD}",
        )
        names = (
            f"embedding_{label}_mean_distance",
            f"embedding_{label}_mmd",
            f"embedding_{label}_mmd_p",
        )
        check["metrics"] = dict.fromkeys(names)
        ref_n = 0 if ref is None else len(ref)
        cur_n = 0 if cur is None else len(cur)
        if min(ref_n, cur_n) < MIN_SAMPLES or ref.shape[1] != cur.shape[1]:
            check["note"] = _too_few(ref_n, cur_n) + " (captured with embeddings)"
        else:
            # The permutation test is quadratic in the sample: 500 a side tells apart any
            # shift worth an alert, in well under a second.
            result = mmd_test(ref[:500], cur[:500], permutations=permutations)
            distance = mean_distance(ref, cur)
            check.update(
                statistic=result.mmd2,
                p_value=result.p_value,
                drifted=result.p_value < MMD_P_THRESHOLD,
            )
            check["metrics"] = dict(
                zip(names, (distance, result.mmd2, result.p_value), strict=True)
            )
        checks.append(check)
    return checks


def _too_few(reference: int, current: int) -> str:
    return f"insufficient data: {reference} reference / {current} current, {MIN_SAMPLES} needed"


def _report_of(row: Any) -> dict[str, Any]:
    report = dict(row)
    for key in ("created_at", "window_start", "window_end", "reference_start", "reference_end"):
        value = report.get(key)
        if isinstance(value, datetime):
            if value.tzinfo is None:  # SQLite hands back naive UTC
                value = value.replace(tzinfo=UTC)
            report[key] = value.isoformat()
    return report


def _query_reports(database: Database, model: str) -> Any:
    reports = drift_reports.c
    return select(drift_reports).where(or_(reports.model == model, reports.target == model))


def latest_drift(database: Database, *, model: str) -> dict[str, Any] | None:
    """The newest stored report for `model` (a name, or a target as asked, "name@alias"):
    the report's fields, its numeric `metrics` flattened in, and `drifted`. None when there
    is none."""
    query = _query_reports(database, model).order_by(drift_reports.c.created_at.desc()).limit(1)
    with database.engine.connect() as conn:
        row = conn.execute(query).first()
    if row is None:
        return None
    report = _report_of(row._mapping)
    return {**report["metrics"], **report}


def drift_history(
    database: Database, *, model: str, limit: int = 100, since: datetime | None = None
) -> list[dict[str, Any]]:
    """Stored reports for `model`, newest first."""
    query = _query_reports(database, model)
    if since is not None:
        query = query.where(drift_reports.c.created_at >= since)
    query = query.order_by(drift_reports.c.created_at.desc()).limit(limit)
    with database.engine.connect() as conn:
        return [_report_of(row._mapping) for row in conn.execute(query)]


def register_gauges(monitor: DriftMonitor, registry: CollectorRegistry) -> None:
    """Gauges of the latest report per model, read from memory at scrape time."""
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector

    class _DriftCollector(Collector):
        def collect(self) -> Iterator[GaugeMetricFamily]:
            values = GaugeMetricFamily(
                "keel_drift_value",
                "The latest drift report's figures, per model and metric.",
                labels=["model", "metric"],
            )
            drifted = GaugeMetricFamily(
                "keel_drift_detected",
                "1 when the latest drift report found drift.",
                labels=["model"],
            )
            for report in monitor.latest_reports():
                drifted.add_metric([report["model"]], 1.0 if report["drifted"] else 0.0)
                for metric, value in sorted(report["metrics"].items()):
                    if isinstance(value, int | float):
                        values.add_metric([report["model"], metric], float(value))
            yield values
            yield drifted

    registry.register(_DriftCollector())
