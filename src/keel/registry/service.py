"""The model registry: versioned model cards, aliases, gated promotions, evaluations, lineage.

Synchronous by design: the server calls each method through `asyncio.to_thread`, and each
method is one database transaction, so a failed check leaves nothing half-written.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Connection, Row, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from keel.errors import ConflictError, InvalidRequestError, NotFoundError, PermissionDeniedError
from keel.identity import Actor
from keel.registry import tables as db
from keel.registry.cards import ModelCard, card_diff, card_digest, parse_card
from keel.registry.models import (
    GATE_OPS,
    NEXT_STAGE,
    REVIEWERS,
    STAGE_ALIASES,
    WRITERS,
    AliasMove,
    EntityRef,
    Evaluation,
    LineageLink,
    LineageNode,
    ModelSnapshot,
    ModelSummary,
    Promotion,
    QualityGate,
    Stage,
    VersionRecord,
    alias_move_of,
    checked_name,
    evaluation_of,
    failed_gates,
    promotion_of,
    require,
    utc,
    version_record,
)
from keel.store.database import Database

__all__ = ["STAGE_ALIASES", "Registry", "Stage"]

_MODELS, _VERSIONS, _ALIASES = db.registry_models.c, db.registry_versions.c, db.registry_aliases.c
_HISTORY, _PROMOTIONS, _VOTES = (
    db.registry_alias_history.c,
    db.registry_promotions.c,
    db.registry_approvals.c,
)


class Registry:
    def __init__(
        self,
        database: Database,
        *,
        approvals_required: int = 1,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if approvals_required < 1:
            raise ValueError("approvals_required must be at least 1")
        self.database = database
        self.approvals_required = approvals_required
        self._clock = clock

    # --- models and versions -----------------------------------------------------------------

    def create(self, card: ModelCard, actor: Actor) -> VersionRecord:
        require(actor, WRITERS, "create registry models")
        name = checked_name(card.name)
        try:
            with self._write() as conn:
                if conn.execute(select(_MODELS.name).where(_MODELS.name == name)).first():
                    raise ConflictError(f"registry model {name!r} already exists")
                now = self._now()
                conn.execute(
                    insert(db.registry_models).values(
                        name=name, archived=False, created_by=actor.name, created_at=now
                    )
                )
                values = db.insert_version(conn, name, 1, card, actor, now)
        except IntegrityError as exc:  # a concurrent create of the same name won the race
            raise ConflictError(f"registry model {name!r} already exists") from exc
        return version_record(values, card=card)

    def add_version(self, name: str, card: ModelCard, actor: Actor) -> VersionRecord:
        require(actor, WRITERS, "add versions")
        if card.name != name:
            raise InvalidRequestError(f"the card is for {card.name!r}, not {name!r}", param="name")
        digest = card_digest(card)
        # The model row lock serializes writers on PostgreSQL (SQLite takes its write lock up
        # front); the unique (model, number) constraint is the backstop, retried once more.
        for _ in range(3):
            try:
                with self._write() as conn:
                    db.live_model(conn, name, lock=True)
                    latest = db.latest_row(conn, name)
                    if latest.digest == digest:
                        evaluations = db.evaluations_of(conn, name, latest.number)
                        return version_record(latest._mapping, evaluations, created=False)
                    top = conn.execute(
                        select(func.max(_VERSIONS.number)).where(_VERSIONS.model == name)
                    ).scalar_one()
                    values = db.insert_version(conn, name, top + 1, card, actor, self._now())
                return version_record(values, card=card)
            except IntegrityError:
                continue
        raise ConflictError(f"could not add a version to {name!r}: too many concurrent writers")

    def list_models(self, *, include_archived: bool = False) -> list[ModelSummary]:
        with self._read() as conn:
            query = select(db.registry_models).order_by(_MODELS.name)
            if not include_archived:
                query = query.where(_MODELS.archived.is_(False))
            return db.summaries(conn, list(conn.execute(query)), all_models=True)

    def get(self, name: str) -> ModelSummary:
        with self._read() as conn:
            return db.summaries(conn, [db.model_row(conn, name)])[0]

    def version(self, name: str, number: int) -> VersionRecord:
        with self._read() as conn:
            row = db.version_row(conn, name, number)
            return version_record(row._mapping, db.evaluations_of(conn, name, number))

    def resolve(self, reference: str) -> VersionRecord:
        """`name` (production alias, else latest), `name@alias` or `name@3`."""
        name, at, ref = reference.partition("@")
        if at and not ref:
            raise InvalidRequestError(f"{reference!r}: nothing after '@'", param="reference")
        with self._read() as conn:
            db.model_row(conn, name)
            if ref.isascii() and ref.isdigit():
                number = int(ref)
            elif ref:
                found = db.alias_version(conn, name, ref)
                if found is None:
                    raise NotFoundError(f"registry model {name!r} has no alias {ref!r}")
                number = found
            else:
                production = db.alias_version(conn, name, "production")
                number = production or db.latest_row(conn, name).number
            row = db.version_row(conn, name, number)
            return version_record(row._mapping, db.evaluations_of(conn, name, number))

    def diff(self, name: str, a: int, b: int) -> dict[str, dict[str, Any]]:
        with self._read() as conn:
            first, second = db.version_row(conn, name, a), db.version_row(conn, name, b)
        return card_diff(parse_card(first.card), parse_card(second.card))

    def archive(self, name: str, actor: Actor, *, version: int | None = None) -> ModelSummary:
        """Archive a model, or one version of it. Rows are kept; nothing is deleted."""
        require(actor, WRITERS, "archive models")
        with self._write() as conn:
            db.model_row(conn, name, lock=True)
            now = self._now()
            pending = (_PROMOTIONS.model == name) & (_PROMOTIONS.status == "pending")
            if version is None:
                conn.execute(
                    update(db.registry_models)
                    .where(_MODELS.name == name, _MODELS.archived.is_(False))
                    .values(archived=True, archived_at=now)
                )
            else:
                db.archive_version(conn, name, version)
                pending = pending & (_PROMOTIONS.version == version)
            # A request for something archived can never be approved; close it visibly.
            conn.execute(
                update(db.registry_promotions)
                .where(pending)
                .values(status="cancelled", decided_at=now)
            )
            return db.summaries(conn, [db.model_row(conn, name)])[0]

    # --- aliases -------------------------------------------------------------------------------

    def move_alias(
        self,
        name: str,
        alias: str,
        version: int,
        actor: Actor,
        *,
        reason: str,
        expected_version: int | None = None,
        approval_id: str | None = None,
    ) -> AliasMove:
        require(actor, WRITERS, "move aliases")
        if not alias or alias.isdigit() or "@" in alias:
            raise InvalidRequestError(f"invalid alias {alias!r}", param="alias")
        if not reason.strip():
            raise InvalidRequestError("moving an alias needs a reason", param="reason")
        with self._write() as conn:
            db.live_model(conn, name, lock=True)
            if db.version_row(conn, name, version).stage == "archived":
                raise ConflictError(f"{name}@{version} is archived")
            if alias in STAGE_ALIASES:
                db.check_stage_approval(conn, name, alias, version, approval_id)
            expected, now = expected_version, self._now()
            return db.move_alias_row(
                conn, name, alias, version, actor, reason, expected, approval_id, now
            )

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasMove]:
        with self._read() as conn:
            db.model_row(conn, name)
            query = select(db.registry_alias_history).where(_HISTORY.model == name)
            if alias is not None:
                query = query.where(_HISTORY.alias == alias)
            rows = conn.execute(query.order_by(_HISTORY.at, _HISTORY.id))
            return [alias_move_of(row._mapping) for row in rows]

    def alias_at(self, name: str, alias: str, at: datetime) -> int | None:
        """Where `alias` pointed at instant `at` (None: it wasn't set yet)."""
        with self._read() as conn:
            db.model_row(conn, name)
            query = (
                select(_HISTORY.to_version)
                .where(_HISTORY.model == name, _HISTORY.alias == alias, _HISTORY.at <= utc(at))
                .order_by(_HISTORY.at.desc(), _HISTORY.id.desc())
                .limit(1)
            )
            found: int | None = conn.execute(query).scalar_one_or_none()
            return found

    # --- promotions and quality gates ----------------------------------------------------------

    def request_promotion(
        self,
        name: str,
        version: int,
        stage: Stage,
        actor: Actor,
        *,
        comment: str | None = None,
        expires_in_s: float | None = None,
    ) -> Promotion:
        require(actor, WRITERS, "request promotions")
        if stage not in STAGE_ALIASES:
            raise InvalidRequestError(
                f"versions are promoted to staging or production, not {stage!r} "
                "(archive() archives)",
                param="stage",
            )
        if expires_in_s is not None and not expires_in_s > 0:
            raise InvalidRequestError("expires_in_s must be positive", param="expires_in_s")
        try:
            with self._write() as conn:
                db.live_model(conn, name, lock=True)
                current = db.version_row(conn, name, version).stage
                if NEXT_STAGE.get(current) != stage:
                    after = NEXT_STAGE.get(current, "nothing")
                    raise InvalidRequestError(
                        f"{name}@{version} is in {current}: it can move to {after}, not {stage}",
                        param="stage",
                        code="invalid_stage_transition",
                    )
                now = self._now()
                db.check_no_open_promotion(conn, name, stage, now)
                expires = None if expires_in_s is None else now + timedelta(seconds=expires_in_s)
                values: dict[str, Any] = {"id": f"prm_{uuid.uuid4().hex[:20]}", "model": name}
                values |= {"version": version, "stage": stage, "requested_by": actor.name}
                values |= {"status": "pending", "comment": comment, "created_at": now}
                values |= {"expires_at": expires, "decided_at": None, "overridden_by": None}
                conn.execute(insert(db.registry_promotions).values(**values))
        except IntegrityError as exc:  # the partial unique index: a concurrent request won
            raise ConflictError(f"a promotion of {name!r} to {stage} is already pending") from exc
        return promotion_of(values, ())

    def approve(
        self,
        promotion_id: str,
        actor: Actor,
        *,
        comment: str | None = None,
        override_gates: bool = False,
    ) -> Promotion:
        require(actor, REVIEWERS, "approve promotions")
        if override_gates and not actor.has_any("admin"):
            raise PermissionDeniedError("only an admin can override quality gates")
        with self._write() as conn:
            row = self._lock_promotion(conn, promotion_id)
            if row.requested_by == actor.name:
                raise PermissionDeniedError("a promotion needs approval from someone else")
            _require_owning_team(conn, row, actor)
            now = self._now()
            expired = self._expire_if_due(conn, row, now)
            if not expired:
                db.insert_vote(conn, row, actor, "approve", comment, now)
                approvals = conn.execute(
                    select(func.count())
                    .select_from(db.registry_approvals)
                    .where(_VOTES.promotion_id == row.id, _VOTES.decision == "approve")
                ).scalar_one()
                if approvals >= self.approvals_required:
                    self._complete(conn, row, actor, override_gates, now)
                result = self._load_promotion(conn, promotion_id)
        # Raised after the commit, so the expiry is recorded rather than rolled back.
        if expired:
            raise ConflictError(f"promotion {promotion_id} has expired", code="promotion_expired")
        return result

    def reject(self, promotion_id: str, actor: Actor, *, comment: str | None = None) -> Promotion:
        require(actor, REVIEWERS, "reject promotions")
        with self._write() as conn:
            row = self._lock_promotion(conn, promotion_id)
            _require_owning_team(conn, row, actor)
            now = self._now()
            expired = self._expire_if_due(conn, row, now)
            if not expired:
                db.insert_vote(conn, row, actor, "reject", comment, now)
                db.set_promotion(conn, row.id, status="rejected", decided_at=now)
                result = self._load_promotion(conn, promotion_id)
        if expired:
            raise ConflictError(f"promotion {promotion_id} has expired", code="promotion_expired")
        return result

    @staticmethod
    def _lock_promotion(conn: Connection, promotion_id: str) -> Row[Any]:
        # Every writer locks the model row first (archive, alias moves, new versions), so
        # taking it before the promotion row keeps the lock order the same everywhere.
        model = db.promotion_row(conn, promotion_id, lock=False).model
        db.model_row(conn, model, lock=True)
        return db.promotion_row(conn, promotion_id)

    def promotion(self, promotion_id: str) -> Promotion:
        with self._read() as conn:
            return self._load_promotion(conn, promotion_id)

    def promotions(self, *, name: str | None = None, status: str | None = None) -> list[Promotion]:
        with self._read() as conn:
            query = select(db.registry_promotions).order_by(_PROMOTIONS.created_at, _PROMOTIONS.id)
            if name is not None:
                query = query.where(_PROMOTIONS.model == name)
            rows = list(conn.execute(query))
            votes = db.votes_of(conn, [row.id for row in rows])
        now = self._now()
        found = [promotion_of(row._mapping, votes[row.id], now) for row in rows]
        return [item for item in found if status is None or item.status == status]

    def set_gates(
        self, name: str, stage: Stage, gates: Sequence[QualityGate], actor: Actor
    ) -> list[QualityGate]:
        """Replace the quality gates a version must pass to enter `stage`."""
        require(actor, REVIEWERS, "set quality gates")
        if stage not in STAGE_ALIASES:
            raise InvalidRequestError(f"gates guard staging or production, not {stage!r}")
        for gate in gates:
            if gate.op not in GATE_OPS or not gate.metric or not math.isfinite(gate.threshold):
                raise InvalidRequestError(f"invalid quality gate {gate!r}", param="gates")
        with self._write() as conn:
            db.model_row(conn, name, lock=True)
            db.replace_gates(conn, name, stage, gates)
        return list(gates)

    def gates(self, name: str, stage: Stage) -> list[QualityGate]:
        with self._read() as conn:
            db.model_row(conn, name)
            return db.gates_of(conn, name, stage)

    def record_evaluation(
        self,
        name: str,
        version: int,
        *,
        metric: str,
        value: float,
        dataset: str | None = None,
        run_id: str | None = None,
        actor: Actor,
    ) -> Evaluation:
        require(actor, WRITERS, "record evaluations")
        if not metric or not math.isfinite(value):
            raise InvalidRequestError("an evaluation needs a metric and a finite value")
        with self._write() as conn:
            db.version_row(conn, name, version)
            now = self._now()
            values = db.insert_evaluation(
                conn, name, version, metric, value, dataset, run_id, actor, now
            )
        return evaluation_of(values)

    # --- lineage and the gateway's view --------------------------------------------------------

    def link(
        self, upstream: EntityRef, downstream: EntityRef, *, relation: str, actor: Actor
    ) -> LineageLink:
        """Record that `upstream` feeds `downstream`; linking the same edge twice is a no-op."""
        require(actor, WRITERS, "record lineage")
        if not (upstream.kind and upstream.id and downstream.kind and downstream.id and relation):
            raise InvalidRequestError("lineage links need kinds, ids and a relation")
        if upstream == downstream:
            raise InvalidRequestError("an entity cannot be its own upstream")
        with self._write() as conn:
            for ref in (upstream, downstream):
                if ref.kind == "model_version":
                    name, _, number = ref.id.partition("@")
                    if not (number.isascii() and number.isdigit()):
                        raise InvalidRequestError(f"model_version ids are 'name@3', not {ref.id!r}")
                    db.version_row(conn, name, int(number))
            return db.insert_link(conn, upstream, downstream, relation, actor, self._now())

    def lineage(
        self,
        entity: EntityRef,
        *,
        direction: Literal["upstream", "downstream", "both"] = "both",
        depth: int = 10,
    ) -> LineageNode:
        """The lineage tree around `entity`, `depth` links each way; cycles are cut and marked."""
        if direction not in ("upstream", "downstream", "both") or depth < 0:
            raise InvalidRequestError("direction is upstream, downstream or both; depth >= 0")
        path = frozenset({entity})
        with self._read() as conn:
            up = db.walk(conn, entity, "upstream", depth, path) if direction != "downstream" else ()
            down = (
                db.walk(conn, entity, "downstream", depth, path) if direction != "upstream" else ()
            )
        return LineageNode(entity, None, up, down)

    def snapshot(self) -> dict[str, ModelSnapshot]:
        with self._read() as conn:
            return db.snapshot_of(conn)

    # --- internals -------------------------------------------------------------------------------

    def _now(self) -> datetime:
        return utc(self._clock())

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.database.engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                # pysqlite opens a deferred transaction, so two writers could both read and then
                # fail to upgrade their locks; IMMEDIATE takes the write lock up front instead.
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.database.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                # Several queries answer one question; let them all see the same instant.
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            yield conn

    def _load_promotion(self, conn: Connection, promotion_id: str) -> Promotion:
        query = select(db.registry_promotions).where(_PROMOTIONS.id == promotion_id)
        row = conn.execute(query).first()
        if row is None:
            raise NotFoundError(f"promotion {promotion_id!r} not found")
        votes = db.votes_of(conn, [promotion_id])[promotion_id]
        return promotion_of(row._mapping, votes, self._now())

    def _expire_if_due(self, conn: Connection, row: Row[Any], now: datetime) -> bool:
        if row.status != "pending":
            raise ConflictError(
                f"promotion {row.id} is {row.status}, not pending", code="promotion_not_pending"
            )
        if row.expires_at is None or utc(row.expires_at) > now:
            return False
        db.set_promotion(conn, row.id, status="expired", decided_at=now)
        return True

    def _complete(
        self, conn: Connection, row: Row[Any], actor: Actor, override: bool, now: datetime
    ) -> None:
        """Enough approvals: check the gates, then move the stage and its alias."""
        db.live_model(conn, row.model)
        stage = db.version_row(conn, row.model, row.version).stage
        if NEXT_STAGE.get(stage) != row.stage:
            raise ConflictError(f"{row.model}@{row.version} is now {stage}; cannot promote it")
        results = db.evaluations_of(conn, row.model, row.version)
        failures = failed_gates(db.gates_of(conn, row.model, row.stage), results)
        if failures and not override:
            raise InvalidRequestError(
                f"quality gate failed for {row.model}@{row.version} -> {row.stage}: "
                + "; ".join(failures),
                param="gates",
                code="quality_gate_failed",
            )
        conn.execute(
            update(db.registry_versions)
            .where(_VERSIONS.model == row.model, _VERSIONS.number == row.version)
            .values(stage=row.stage)
        )
        reason = f"promotion {row.id} approved" + (f": {row.comment}" if row.comment else "")
        db.move_alias_row(conn, row.model, row.stage, row.version, actor, reason, None, row.id, now)
        overridden_by = actor.name if failures else None
        db.set_promotion(
            conn, row.id, status="approved", decided_at=now, overridden_by=overridden_by
        )


def _require_owning_team(conn: Connection, promotion: Row[Any], actor: Actor) -> None:
    """A card whose `owners` name teams (`team:<name>`) is reviewed by those teams: only their
    members (or an admin) may approve or reject its promotions."""
    card = parse_card(db.version_row(conn, promotion.model, promotion.version).card)
    teams = {owner[5:] for owner in card.owners if owner.startswith("team:")}
    if teams and actor.team not in teams and not actor.has_any("admin"):
        raise PermissionDeniedError(
            f"promotions of {promotion.model!r} are reviewed by team "
            f"{', '.join(sorted(teams))}; you are not in it",
            code="team_review_required",
        )
