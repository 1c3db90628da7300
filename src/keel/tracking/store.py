"""The tracking store: experiments, runs and what they log, on Keel's database.

The same code serves both sides: the server calls it in worker threads, and the SDK's embedded
mode calls it from its background flusher against the local `KEEL_HOME` database. Every method
returns plain JSON-ready dicts (times as ISO 8601 strings), so a run read through the embedded
store and one read over HTTP look the same.

Lost runs: a run whose process died without a word (SIGKILL, power loss) stays `running`
until it is next read; a read marks every `running` run silent for `stale_after_s` as
`failed` with the error "lost: ...", its end time its last heartbeat.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from keel.errors import ConflictError, InvalidRequestError, NotFoundError
from keel.identity import Actor
from keel.registry.models import EntityRef
from keel.registry.tables import insert_link, version_row
from keel.store.database import Database
from keel.tracking import tables as t
from keel.tracking.artifacts import ArtifactStore, checked_name
from keel.tracking.queries import differ, insert_points, iso, run_rows

__all__ = [
    "STATUSES",
    "LogBatch",
    "Provenance",
    "RunOwner",
    "TrackingStore",
    "config_digest",
]

STATUSES = ("running", "finished", "failed")
MetricPoint = tuple[str, float, int, int]  # key, value, step, timestamp (epoch ms)

_RUNS, _EXPERIMENTS = t.tracking_runs.c, t.tracking_experiments.c
_METRICS, _PARAMS, _TAGS = t.tracking_metrics.c, t.tracking_params.c, t.tracking_tags.c
_ARTIFACTS, _INPUTS, _CONFIGS = (
    t.tracking_artifacts.c,
    t.tracking_inputs.c,
    t.tracking_model_configs.c,
)


@dataclass(frozen=True, slots=True)
class RunOwner:
    """Who a run runs as: the caller's key and its environment (None: the embedded store)."""

    name: str
    key_id: str | None = None
    environment: str | None = None
    team: str | None = None


@dataclass(frozen=True, slots=True)
class Provenance:
    git_commit: str | None = None
    git_dirty: bool | None = None
    python_version: str | None = None
    packages_digest: str | None = None
    host: str | None = None


@dataclass(slots=True)
class LogBatch:
    run_id: str
    metrics: list[MetricPoint] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def config_digest(config: Mapping[str, Any]) -> str:
    """The content address of a model configuration: SHA-256 of its canonical JSON."""
    try:
        text = json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"config: not plain JSON data ({exc})", param="config") from None
    return hashlib.sha256(text.encode()).hexdigest()


def _param_text(key: str, value: Any) -> str:
    try:
        text = json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):
        raise InvalidRequestError(
            f"params.{key}: values must be JSON data (text, numbers, booleans, lists, objects)",
            param=f"params.{key}",
        ) from None
    if len(text) > t.VALUE:
        raise InvalidRequestError(
            f"params.{key}: the value is over {t.VALUE} characters", param=f"params.{key}"
        )
    return text


class TrackingStore:
    def __init__(
        self,
        database: Database,
        artifacts: ArtifactStore,
        *,
        stale_after_s: float = 120.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.database = database
        self.artifacts = artifacts
        self.stale_after_s = stale_after_s
        self._clock = clock

    # --- experiments ---------------------------------------------------------------------------

    def ensure_experiment(
        self, name: str, created_by: str, description: str | None = None
    ) -> dict[str, Any]:
        with self.database.engine.begin() as conn:
            return self._experiment(conn, name, created_by, description)

    def _experiment(
        self, conn: Connection, name: str, created_by: str, description: str | None = None
    ) -> dict[str, Any]:
        if not name or len(name) > t.NAME:
            raise InvalidRequestError(
                f"experiment: names are 1 to {t.NAME} characters", param="experiment"
            )
        found = conn.execute(
            select(t.tracking_experiments).where(_EXPERIMENTS.name == name)
        ).first()
        if found is not None:
            return self._experiment_row(found._mapping)
        values: dict[str, Any] = {"id": f"exp_{uuid.uuid4().hex[:20]}", "name": name}
        values |= {"description": description, "created_by": created_by}
        values["created_at"] = self._clock()
        try:
            with conn.begin_nested():
                conn.execute(insert(t.tracking_experiments).values(**values))
        except IntegrityError:  # created at the same moment by another writer
            found = conn.execute(
                select(t.tracking_experiments).where(_EXPERIMENTS.name == name)
            ).first()
            if found is None:
                raise
            return self._experiment_row(found._mapping)
        return self._experiment_row(values)

    @staticmethod
    def _experiment_row(row: Mapping[Any, Any]) -> dict[str, Any]:
        return {
            "id": row["id"],
            "name": row["name"],
            "description": row["description"],
            "created_by": row["created_by"],
            "created_at": iso(row["created_at"]),
        }

    def list_experiments(self) -> list[dict[str, Any]]:
        counts = (
            select(
                _RUNS.experiment_id,
                func.count().label("runs"),
                func.max(_RUNS.started_at).label("last_run_at"),
            )
            .group_by(_RUNS.experiment_id)
            .subquery()
        )
        query = (
            select(t.tracking_experiments, counts.c.runs, counts.c.last_run_at)
            .outerjoin(counts, counts.c.experiment_id == _EXPERIMENTS.id)
            .order_by(_EXPERIMENTS.name)
        )
        with self.database.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            self._experiment_row(row._mapping)
            | {"runs": int(row.runs or 0), "last_run_at": iso(row.last_run_at)}
            for row in rows
        ]

    # --- runs ----------------------------------------------------------------------------------

    def create_run(
        self,
        experiment: str,
        owner: RunOwner,
        *,
        name: str | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        provenance: Provenance = Provenance(),
        run_id: str | None = None,
    ) -> dict[str, Any]:
        now = self._clock()
        run_id = run_id or f"run_{uuid.uuid4().hex[:24]}"
        param_rows = [
            {"run_id": run_id, "key": key, "value": _param_text(key, value)}
            for key, value in (params or {}).items()
        ]
        tag_rows = [{"run_id": run_id, "key": k, "value": str(v)} for k, v in (tags or {}).items()]
        with self.database.engine.begin() as conn:
            found = self._experiment(conn, experiment, owner.name)
            values: dict[str, Any] = {"id": run_id, "experiment_id": found["id"], "name": name}
            values |= {"status": "running", "created_by": owner.name, "key_id": owner.key_id}
            values |= {"environment": owner.environment, "team": owner.team}
            values |= {"started_at": now, "heartbeat_at": now}
            values |= {
                "git_commit": provenance.git_commit,
                "git_dirty": provenance.git_dirty,
                "python_version": provenance.python_version,
                "packages_digest": provenance.packages_digest,
                "host": provenance.host,
            }
            try:
                with conn.begin_nested():
                    conn.execute(insert(t.tracking_runs).values(**values))
            except IntegrityError:
                raise ConflictError(f"run {run_id} already exists") from None
            if param_rows:
                conn.execute(insert(t.tracking_params), param_rows)
            if tag_rows:
                conn.execute(insert(t.tracking_tags), tag_rows)
        return self.get_run(run_id)

    def run_status(self, run_id: str) -> str | None:
        with self.database.engine.connect() as conn:
            status: str | None = conn.execute(
                select(_RUNS.status).where(_RUNS.id == run_id)
            ).scalar()
        return status

    def write_batches(self, batches: Sequence[LogBatch]) -> None:
        """Metrics, params and tags of one or more runs in one transaction; each run named
        counts as a heartbeat."""
        metric_rows = [
            (batch.run_id, key, value, step, ts)
            for batch in batches
            for (key, value, step, ts) in batch.metrics
        ]
        params: dict[tuple[str, str], str] = {}
        tags: dict[tuple[str, str], str] = {}
        for batch in batches:
            for key, value in batch.params.items():
                params[(batch.run_id, key)] = _param_text(key, value)
            for key, value in batch.tags.items():
                tags[(batch.run_id, key)] = str(value)
        now = self._clock()
        run_ids = sorted({batch.run_id for batch in batches})
        with self.database.engine.begin() as conn:
            if metric_rows:
                insert_points(conn, metric_rows)
            for table, columns, rows in (
                (t.tracking_params, _PARAMS, params),
                (t.tracking_tags, _TAGS, tags),
            ):
                if not rows:
                    continue
                # Latest value wins: delete and insert, the same on SQLite and PostgreSQL.
                for run_id, key in rows:
                    conn.execute(delete(table).where(columns.run_id == run_id, columns.key == key))
                conn.execute(
                    insert(table),
                    [{"run_id": r, "key": k, "value": v} for (r, k), v in rows.items()],
                )
            if run_ids:
                conn.execute(
                    update(t.tracking_runs)
                    .where(_RUNS.id.in_(run_ids), _RUNS.status == "running")
                    .values(heartbeat_at=now)
                )

    def finish_run(self, run_id: str, status: str, error: str | None = None) -> dict[str, Any]:
        if status not in ("finished", "failed"):
            raise InvalidRequestError(
                "status: a run finishes as finished or failed", param="status"
            )
        now = self._clock()
        with self.database.engine.begin() as conn:
            current = conn.execute(select(_RUNS.status).where(_RUNS.id == run_id)).scalar()
            if current is None:
                raise NotFoundError(f"no run {run_id}")
            if current == "running":
                conn.execute(
                    update(t.tracking_runs)
                    .where(_RUNS.id == run_id)
                    .values(
                        status=status,
                        ended_at=now,
                        heartbeat_at=now,
                        error=error[:2000] if error else None,
                    )
                )
            elif current != status:
                raise ConflictError(f"run {run_id} already ended as {current}")
        return self.get_run(run_id)

    def mark_lost(self) -> int:
        """Mark running runs silent for `stale_after_s` as failed; how many were."""
        cutoff = self._clock() - timedelta(seconds=self.stale_after_s)
        silent = (
            f"lost: no heartbeat for over {self.stale_after_s:g}s (the process died or lost "
            "its connection)"
        )
        with self.database.engine.begin() as conn:
            result = conn.execute(
                update(t.tracking_runs)
                .where(_RUNS.status == "running", _RUNS.heartbeat_at < cutoff)
                .values(status="failed", ended_at=_RUNS.heartbeat_at, error=silent)
            )
        return int(result.rowcount or 0)

    # --- reading -------------------------------------------------------------------------------

    def get_run(self, run_id: str) -> dict[str, Any]:
        self.mark_lost()
        with self.database.engine.connect() as conn:
            found = run_rows(conn, [_RUNS.id == run_id], limit=1)
            if not found:
                raise NotFoundError(f"no run {run_id}")
            run = found[0]
            run["artifacts"] = [
                {
                    "name": row.name,
                    "size": int(row.size),
                    "sha256": row.sha256,
                    "media_type": row.media_type,
                    "uri": row.uri,
                    "created_at": iso(row.created_at),
                }
                for row in conn.execute(
                    select(t.tracking_artifacts)
                    .where(_ARTIFACTS.run_id == run_id)
                    .order_by(_ARTIFACTS.name)
                )
            ]
            # A model configuration comes with its content: enough to run it again.
            configs = select(t.tracking_model_configs.c.config).where(
                _CONFIGS.name == _INPUTS.name, _CONFIGS.digest == _INPUTS.ref
            )
            run["inputs"] = [
                {
                    "kind": row.kind,
                    "ref": row.ref,
                    "name": row.name,
                    "version": row.version,
                    "relation": row.relation,
                }
                | ({"config": row.config} if row.kind == "model_config" else {})
                for row in conn.execute(
                    select(t.tracking_inputs, configs.scalar_subquery().label("config"))
                    .where(_INPUTS.run_id == run_id)
                    .order_by(_INPUTS.kind, _INPUTS.ref)
                )
            ]
        return run

    def list_runs(
        self,
        *,
        experiment: str | None = None,
        status: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        if status is not None and status not in STATUSES:
            raise InvalidRequestError(
                f"status: one of {', '.join(STATUSES)}, not {status!r}", param="status"
            )
        self.mark_lost()
        conditions: list[Any] = []
        with self.database.engine.connect() as conn:
            if experiment is not None:
                found = conn.execute(
                    select(_EXPERIMENTS.id).where(_EXPERIMENTS.name == experiment)
                ).scalar()
                if found is None:
                    raise NotFoundError(f"no experiment {experiment!r}")
                conditions.append(_RUNS.experiment_id == found)
            if status is not None:
                conditions.append(_RUNS.status == status)
            return run_rows(conn, conditions, limit=limit)

    def metric_history(self, run_id: str, key: str) -> list[dict[str, Any]]:
        with self.database.engine.connect() as conn:
            if conn.execute(select(_RUNS.id).where(_RUNS.id == run_id)).first() is None:
                raise NotFoundError(f"no run {run_id}")
            rows = conn.execute(
                select(_METRICS.value, _METRICS.step, _METRICS.timestamp_ms)
                .where(_METRICS.run_id == run_id, _METRICS.key == key)
                .order_by(_METRICS.step, _METRICS.id)
            ).all()
        return [
            {"step": int(row.step), "value": row.value, "timestamp_ms": int(row.timestamp_ms)}
            for row in rows
        ]

    def compare(self, run_ids: Sequence[str]) -> dict[str, Any]:
        """Runs side by side: every param and metric key any of them has, one value per run
        (None where a run lacks it), and which keys differ."""
        if not 2 <= len(run_ids) <= 50 or len(set(run_ids)) != len(run_ids):
            raise InvalidRequestError("ids: compare 2 to 50 distinct runs", param="ids")
        runs = [self.get_run(run_id) for run_id in run_ids]
        param_keys = sorted({key for run in runs for key in run["params"]})
        metric_keys = sorted({key for run in runs for key in run["metrics"]})
        params = {key: [run["params"].get(key) for run in runs] for key in param_keys}
        metrics = {
            key: [(run["metrics"].get(key) or {}).get("last") for run in runs]
            for key in metric_keys
        }
        return {
            "object": "run.comparison",
            "runs": [
                {key: run[key] for key in ("id", "name", "experiment", "status", "environment")}
                for run in runs
            ],
            "params": params,
            "metrics": metrics,
            "differing_params": [key for key, values in params.items() if differ(values)],
            "differing_metrics": [key for key, values in metrics.items() if differ(values)],
        }

    # --- artifacts, inputs and model configurations --------------------------------------------

    def add_artifact(
        self, run_id: str, name: str, data: bytes, media_type: str | None = None
    ) -> dict[str, Any]:
        checked_name(name)
        if self.run_status(run_id) is None:
            raise NotFoundError(f"no run {run_id}")
        uri = self.artifacts.put(run_id, name, data)
        values: dict[str, Any] = {"run_id": run_id, "name": name, "size": len(data)}
        values |= {"sha256": hashlib.sha256(data).hexdigest(), "media_type": media_type}
        values |= {"uri": uri, "created_at": self._clock()}
        with self.database.engine.begin() as conn:
            conn.execute(
                delete(t.tracking_artifacts).where(
                    _ARTIFACTS.run_id == run_id, _ARTIFACTS.name == name
                )
            )
            conn.execute(insert(t.tracking_artifacts).values(**values))
        return {key: values[key] for key in ("name", "size", "sha256", "media_type", "uri")} | {
            "created_at": iso(values["created_at"])
        }

    def artifact(self, run_id: str, name: str) -> tuple[bytes, str | None]:
        checked_name(name)
        with self.database.engine.connect() as conn:
            row = conn.execute(
                select(_ARTIFACTS.media_type).where(
                    _ARTIFACTS.run_id == run_id, _ARTIFACTS.name == name
                )
            ).first()
        if row is None:
            raise NotFoundError(f"run {run_id} has no artifact {name!r}")
        return self.artifacts.get(run_id, name), row.media_type

    def add_input(
        self,
        run_id: str,
        kind: str,
        ref: str,
        *,
        created_by: str,
        name: str | None = None,
        version: int | None = None,
        relation: str | None = None,
        output: bool = False,
    ) -> dict[str, Any]:
        """Link what a run used (or, with `output`, produced) to it, here and in the registry's
        lineage graph: an input feeds the run; an output is fed by it."""
        for label, text, limit in (("kind", kind, 64), ("ref", ref, t.NAME)):
            if not text or len(text) > limit:
                raise InvalidRequestError(f"{label}: 1 to {limit} characters", param=label)
        relation = relation or ("produced" if output else "used_by")
        if len(relation) > 64:
            raise InvalidRequestError("relation: at most 64 characters", param="relation")
        now = self._clock()
        with self.database.engine.begin() as conn:
            if conn.execute(select(_RUNS.id).where(_RUNS.id == run_id)).first() is None:
                raise NotFoundError(f"no run {run_id}")
            if kind == "model_version":
                model, _, number = ref.partition("@")
                if not (number.isascii() and number.isdigit()):
                    raise InvalidRequestError(
                        f"ref: model_version ids are 'name@3', not {ref!r}", param="ref"
                    )
                version_row(conn, model, int(number))
            conn.execute(
                delete(t.tracking_inputs).where(
                    _INPUTS.run_id == run_id, _INPUTS.kind == kind, _INPUTS.ref == ref
                )
            )
            conn.execute(
                insert(t.tracking_inputs).values(
                    run_id=run_id,
                    kind=kind,
                    ref=ref,
                    name=name,
                    version=version,
                    relation=relation,
                    created_at=now,
                )
            )
            entity, run = EntityRef(kind, ref), EntityRef("run", run_id)
            upstream, downstream = (run, entity) if output else (entity, run)
            insert_link(conn, upstream, downstream, relation, Actor(created_by), now)
        return {"kind": kind, "ref": ref, "name": name, "version": version, "relation": relation}

    def save_model_config(
        self, config: Mapping[str, Any], *, name: str, created_by: str
    ) -> dict[str, Any]:
        """Store a model configuration once per content; the first time a name sees new
        content it gets the next version number."""
        if not isinstance(config, Mapping):
            raise InvalidRequestError(
                "config: a model configuration is a JSON object", param="config"
            )
        if not name or len(name) > t.NAME:
            raise InvalidRequestError(f"name: 1 to {t.NAME} characters", param="name")
        digest = config_digest(config)
        for _attempt in range(5):
            with self.database.engine.begin() as conn:
                found = conn.execute(
                    select(_CONFIGS.version).where(_CONFIGS.name == name, _CONFIGS.digest == digest)
                ).scalar()
                if found is not None:
                    return {"name": name, "digest": digest, "version": int(found), "created": False}
                latest = conn.execute(
                    select(func.max(_CONFIGS.version)).where(_CONFIGS.name == name)
                ).scalar()
                version = int(latest or 0) + 1
                try:
                    with conn.begin_nested():
                        conn.execute(
                            insert(t.tracking_model_configs).values(
                                name=name,
                                digest=digest,
                                version=version,
                                config=dict(config),
                                created_by=created_by,
                                created_at=self._clock(),
                            )
                        )
                except IntegrityError:
                    continue  # another writer took this version number: look again
                return {"name": name, "digest": digest, "version": version, "created": True}
        raise ConflictError(f"model configuration {name!r}: too many concurrent versions")

    def log_model_config(
        self, run_id: str, config: Mapping[str, Any], *, name: str, created_by: str
    ) -> dict[str, Any]:
        """Save a configuration and link it to the run as an input."""
        if self.run_status(run_id) is None:
            raise NotFoundError(f"no run {run_id}")
        saved = self.save_model_config(config, name=name, created_by=created_by)
        self.add_input(
            run_id,
            "model_config",
            saved["digest"],
            created_by=created_by,
            name=name,
            version=saved["version"],
        )
        return saved
