"""Registry tables, on the same `metadata` as the rest of Keel (migration 0003 creates them),
and the queries the service composes its transactions from. Every query takes the caller's
connection, so a service method stays one transaction however many of them it uses.

Nothing here is ever deleted by the registry: archiving flips a flag or a stage, and alias
moves, promotions and approvals are append-only records that answer "who did what, when".
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Connection,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    Row,
    String,
    Table,
    UniqueConstraint,
    delete,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError

from keel.errors import ConflictError, NotFoundError
from keel.identity import Actor
from keel.registry import models as m
from keel.registry.cards import ModelCard, card_digest, card_document
from keel.store.schema import metadata

__all__ = [
    "lineage_links",
    "registry_alias_history",
    "registry_aliases",
    "registry_approvals",
    "registry_evaluations",
    "registry_gates",
    "registry_models",
    "registry_promotions",
    "registry_versions",
]

_NAME = 255
_MODEL_FK = "registry_models.name"

registry_models = Table(
    "registry_models",
    metadata,
    Column("name", String(_NAME), primary_key=True),
    Column("archived", Boolean, nullable=False, default=False),
    Column("created_by", String(_NAME), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("archived_at", DateTime(timezone=True)),
)

registry_versions = Table(
    "registry_versions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model", String(_NAME), ForeignKey(_MODEL_FK), nullable=False),
    Column("number", Integer, nullable=False),
    Column("digest", String(128), nullable=False),
    Column("stage", String(16), nullable=False),
    Column("card", JSON, nullable=False),
    Column("created_by", String(_NAME), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # The backstop that keeps version numbers sequential and unique under concurrent writers.
    UniqueConstraint("model", "number", name="uq_registry_versions_model_number"),
)

registry_aliases = Table(
    "registry_aliases",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model", String(_NAME), ForeignKey(_MODEL_FK), nullable=False),
    Column("alias", String(_NAME), nullable=False),
    Column("version", Integer, nullable=False),
    Column("updated_by", String(_NAME), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("model", "alias", name="uq_registry_aliases_model_alias"),
)

registry_alias_history = Table(
    "registry_alias_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model", String(_NAME), ForeignKey(_MODEL_FK), nullable=False),
    Column("alias", String(_NAME), nullable=False),
    Column("from_version", Integer),
    Column("to_version", Integer, nullable=False),
    Column("actor", String(_NAME), nullable=False),
    Column("reason", String(2000), nullable=False),
    Column("approval_id", String(64)),
    Column("at", DateTime(timezone=True), nullable=False),
    Index("ix_registry_alias_history_model_alias_at", "model", "alias", "at"),
)

registry_promotions = Table(
    "registry_promotions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("model", String(_NAME), ForeignKey(_MODEL_FK), nullable=False),
    Column("version", Integer, nullable=False),
    Column("stage", String(16), nullable=False),
    Column("requested_by", String(_NAME), nullable=False),
    Column("status", String(16), nullable=False),
    Column("comment", String(2000)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    Column("decided_at", DateTime(timezone=True)),
    Column("overridden_by", String(_NAME)),
    # At most one pending request per model and stage, even when two are filed at once.
    Index(
        "uq_registry_promotions_pending",
        "model",
        "stage",
        unique=True,
        sqlite_where=text("status = 'pending'"),
        postgresql_where=text("status = 'pending'"),
    ),
)

registry_approvals = Table(
    "registry_approvals",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("promotion_id", String(64), ForeignKey("registry_promotions.id"), nullable=False),
    Column("approver", String(_NAME), nullable=False),
    Column("decision", String(16), nullable=False),
    Column("comment", String(2000)),
    Column("at", DateTime(timezone=True), nullable=False),
    # One voice per person per request: the same maintainer can't approve twice.
    UniqueConstraint("promotion_id", "approver", name="uq_registry_approvals_promotion_approver"),
)

registry_gates = Table(
    "registry_gates",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model", String(_NAME), ForeignKey(_MODEL_FK), nullable=False),
    Column("stage", String(16), nullable=False),
    Column("position", Integer, nullable=False),
    Column("metric", String(_NAME), nullable=False),
    Column("op", String(2), nullable=False),
    Column("threshold", Float, nullable=False),
    Column("dataset", String(_NAME)),
    Index("ix_registry_gates_model_stage", "model", "stage"),
)

registry_evaluations = Table(
    "registry_evaluations",
    metadata,
    # `seq` orders results recorded within the same instant, so "the latest result" is exact.
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("model", String(_NAME), ForeignKey(_MODEL_FK), nullable=False),
    Column("version", Integer, nullable=False),
    Column("metric", String(_NAME), nullable=False),
    Column("value", Float, nullable=False),
    Column("dataset", String(_NAME)),
    Column("run_id", String(_NAME)),
    Column("created_by", String(_NAME), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_registry_evaluations_model_version", "model", "version"),
)

lineage_links = Table(
    "lineage_links",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("upstream_kind", String(64), nullable=False),
    Column("upstream_id", String(_NAME), nullable=False),
    Column("downstream_kind", String(64), nullable=False),
    Column("downstream_id", String(_NAME), nullable=False),
    Column("relation", String(64), nullable=False),
    Column("created_by", String(_NAME), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint(
        "upstream_kind",
        "upstream_id",
        "downstream_kind",
        "downstream_id",
        "relation",
        name="uq_lineage_links_edge",
    ),
    Index("ix_lineage_links_upstream", "upstream_kind", "upstream_id"),
    Index("ix_lineage_links_downstream", "downstream_kind", "downstream_id"),
)


# --- queries -------------------------------------------------------------------------------------

_MODELS, _VERSIONS, _ALIASES = registry_models.c, registry_versions.c, registry_aliases.c
_PROMOTIONS, _VOTES = registry_promotions.c, registry_approvals.c
_GATES, _EVALS, _LINKS = registry_gates.c, registry_evaluations.c, lineage_links.c


def model_row(conn: Connection, name: str, *, lock: bool = False) -> Row[Any]:
    query = select(registry_models).where(_MODELS.name == name)
    row = conn.execute(query.with_for_update() if lock else query).first()
    if row is None:
        raise NotFoundError(f"registry model {name!r} not found")
    return row


def live_model(conn: Connection, name: str, *, lock: bool = False) -> Row[Any]:
    row = model_row(conn, name, lock=lock)
    if row.archived:
        raise ConflictError(f"registry model {name!r} is archived")
    return row


def version_row(conn: Connection, name: str, number: int) -> Row[Any]:
    model_row(conn, name)
    query = select(registry_versions).where(_VERSIONS.model == name, _VERSIONS.number == number)
    row = conn.execute(query).first()
    if row is None:
        raise NotFoundError(f"registry model {name!r} has no version {number}")
    return row


def latest_row(conn: Connection, name: str) -> Row[Any]:
    rows = list(conn.execute(select(registry_versions).where(_VERSIONS.model == name)))
    number = m.latest_number({row.number: row.stage for row in rows})
    return next(row for row in rows if row.number == number)


def insert_version(
    conn: Connection, name: str, number: int, card: ModelCard, actor: Actor, now: datetime
) -> dict[str, Any]:
    values: dict[str, Any] = {"model": name, "number": number, "digest": card_digest(card)}
    values |= {"stage": "draft", "card": card_document(card), "created_by": actor.name}
    values["created_at"] = now
    conn.execute(insert(registry_versions).values(**values))
    if card.gateway_model:
        # The lineage graph runs on to what serves the version: model version → gateway model.
        version = m.EntityRef("model_version", f"{name}@{number}")
        served_by = m.EntityRef("group", card.gateway_model)
        insert_link(conn, version, served_by, "served_by", actor, now)
    return values


def evaluations_of(conn: Connection, name: str, number: int) -> list[m.Evaluation]:
    query = select(registry_evaluations).where(_EVALS.model == name, _EVALS.version == number)
    return [m.evaluation_of(row._mapping) for row in conn.execute(query.order_by(_EVALS.seq))]


def summaries(
    conn: Connection, models: list[Row[Any]], *, all_models: bool = False
) -> list[m.ModelSummary]:
    names = [model.name for model in models]
    versions = select(registry_versions).order_by(_VERSIONS.number)
    aliases = select(registry_aliases).order_by(_ALIASES.alias)
    if not all_models:  # one model: filter in SQL; a listing reads everything once
        versions = versions.where(_VERSIONS.model.in_(names))
        aliases = aliases.where(_ALIASES.model.in_(names))
    return m.summaries_of(models, conn.execute(versions), conn.execute(aliases))


def alias_version(conn: Connection, name: str, alias: str) -> int | None:
    query = select(_ALIASES.version).where(_ALIASES.model == name, _ALIASES.alias == alias)
    found: int | None = conn.execute(query).scalar_one_or_none()
    return found


def move_alias_row(
    conn: Connection,
    name: str,
    alias: str,
    version: int,
    actor: Actor,
    reason: str,
    expected: int | None,
    approval_id: str | None,
    now: datetime,
) -> m.AliasMove:
    where = (_ALIASES.model == name) & (_ALIASES.alias == alias)
    current = conn.execute(
        select(_ALIASES.version).where(where).with_for_update()
    ).scalar_one_or_none()
    if expected is not None and current != expected:
        raise ConflictError(
            f"{name}@{alias} points at {current or 'nothing'}, not {expected}",
            code="alias_changed",
        )
    values = {"version": version, "updated_by": actor.name, "updated_at": now}
    lost = ConflictError(f"{name}@{alias} was moved concurrently", code="alias_changed")
    if current is None:
        try:
            conn.execute(insert(registry_aliases).values(model=name, alias=alias, **values))
        except IntegrityError as exc:  # another writer created the alias first
            raise lost from exc
    else:
        # Conditional on the value read: a concurrent mover that got here first wins.
        moved = conn.execute(
            update(registry_aliases).where(where, _ALIASES.version == current).values(**values)
        )
        if moved.rowcount != 1:
            raise lost
    entry: dict[str, Any] = {"model": name, "alias": alias, "from_version": current}
    entry |= {"to_version": version, "actor": actor.name, "reason": reason}
    entry |= {"approval_id": approval_id, "at": now}
    conn.execute(insert(registry_alias_history).values(**entry))
    return m.alias_move_of(entry)


def promotion_row(conn: Connection, promotion_id: str, *, lock: bool = True) -> Row[Any]:
    query = select(registry_promotions).where(_PROMOTIONS.id == promotion_id)
    row = conn.execute(query.with_for_update() if lock else query).first()
    if row is None:
        raise NotFoundError(f"promotion {promotion_id!r} not found")
    return row


def votes_of(conn: Connection, ids: list[str]) -> dict[str, list[m.Approval]]:
    found: dict[str, list[m.Approval]] = defaultdict(list)
    if ids:
        query = select(registry_approvals).where(_VOTES.promotion_id.in_(ids))
        for row in conn.execute(query.order_by(_VOTES.at, _VOTES.id)):
            vote = m.Approval(row.approver, row.decision, row.comment, m.utc(row.at))
            found[row.promotion_id].append(vote)
    return found


def gates_of(conn: Connection, name: str, stage: str) -> list[m.QualityGate]:
    query = select(registry_gates).where(_GATES.model == name, _GATES.stage == stage)
    return [
        m.QualityGate(row.metric, row.op, row.threshold, row.dataset)
        for row in conn.execute(query.order_by(_GATES.position))
    ]


def insert_link(
    conn: Connection,
    upstream: m.EntityRef,
    downstream: m.EntityRef,
    relation: str,
    actor: Actor,
    now: datetime,
) -> m.LineageLink:
    edge = {"upstream_kind": upstream.kind, "upstream_id": upstream.id}
    edge |= {"downstream_kind": downstream.kind, "downstream_id": downstream.id}
    edge["relation"] = relation
    query = select(lineage_links).where(*(_LINKS[key] == value for key, value in edge.items()))
    existing = conn.execute(query).first()
    if existing is not None:
        return m.LineageLink(
            upstream, downstream, relation, existing.created_by, m.utc(existing.created_at)
        )
    try:
        # A savepoint, so a concurrent insert of the same edge leaves this transaction usable.
        with conn.begin_nested():
            conn.execute(
                insert(lineage_links).values(**edge, created_by=actor.name, created_at=now)
            )
    except IntegrityError:
        existing = conn.execute(query).first()
        if existing is None:
            raise
        return m.LineageLink(
            upstream, downstream, relation, existing.created_by, m.utc(existing.created_at)
        )
    return m.LineageLink(upstream, downstream, relation, actor.name, now)


def walk(
    conn: Connection,
    entity: m.EntityRef,
    direction: Literal["upstream", "downstream"],
    depth: int,
    path: frozenset[m.EntityRef],
) -> tuple[m.LineageNode, ...]:
    if depth <= 0:
        return ()
    near, far = (
        ("downstream", "upstream") if direction == "upstream" else ("upstream", "downstream")
    )
    query = select(_LINKS[f"{far}_kind"], _LINKS[f"{far}_id"], _LINKS.relation).where(
        _LINKS[f"{near}_kind"] == entity.kind, _LINKS[f"{near}_id"] == entity.id
    )
    nodes = []
    for kind, ident, relation in conn.execute(query.order_by(_LINKS.id)):
        ref = m.EntityRef(kind, ident)
        if ref in path:  # a cycle: show where it closes, and stop
            nodes.append(m.LineageNode(ref, relation, cycle=True))
            continue
        children = walk(conn, ref, direction, depth - 1, path | {ref})
        if direction == "upstream":
            nodes.append(m.LineageNode(ref, relation, upstream=children))
        else:
            nodes.append(m.LineageNode(ref, relation, downstream=children))
    return tuple(nodes)


def set_promotion(conn: Connection, promotion_id: str, **values: Any) -> None:
    conn.execute(update(registry_promotions).where(_PROMOTIONS.id == promotion_id).values(**values))


def insert_vote(
    conn: Connection, row: Row[Any], actor: Actor, decision: str, comment: str | None, now: datetime
) -> None:
    voted = select(_VOTES.id).where(_VOTES.promotion_id == row.id, _VOTES.approver == actor.name)
    if conn.execute(voted).first() is not None:
        raise ConflictError(f"{actor.name} has already decided on promotion {row.id}")
    conn.execute(
        insert(registry_approvals).values(
            promotion_id=row.id, approver=actor.name, decision=decision, comment=comment, at=now
        )
    )


def replace_gates(conn: Connection, name: str, stage: str, gates: Sequence[m.QualityGate]) -> None:
    conn.execute(delete(registry_gates).where(_GATES.model == name, _GATES.stage == stage))
    for position, gate in enumerate(gates):
        row = {"model": name, "stage": stage, "position": position, "metric": gate.metric}
        row |= {"op": gate.op, "threshold": float(gate.threshold), "dataset": gate.dataset}
        conn.execute(insert(registry_gates).values(**row))


def snapshot_of(conn: Connection) -> dict[str, m.ModelSnapshot]:
    models = conn.execute(select(registry_models))
    versions = conn.execute(select(registry_versions).order_by(_VERSIONS.number))
    return m.snapshot_from(models, versions, conn.execute(select(registry_aliases)))


def check_stage_approval(
    conn: Connection, name: str, alias: str, version: int, approval_id: str | None
) -> None:
    # Stage aliases route production traffic: they move only on an approved promotion of
    # exactly this version to exactly this stage (which also allows a rollback to it).
    row = None
    if approval_id is not None:
        query = select(registry_promotions).where(_PROMOTIONS.id == approval_id)
        row = conn.execute(query).first()
    if row is None or (row.model, row.stage, row.version, row.status) != (
        name,
        alias,
        version,
        "approved",
    ):
        raise ConflictError(
            f"the {alias!r} alias moves only through an approved promotion of "
            f"{name}@{version} to {alias}",
            code="promotion_required",
        )


def archive_version(conn: Connection, name: str, version: int) -> None:
    version_row(conn, name, version)
    query = select(_ALIASES.alias).where(_ALIASES.model == name, _ALIASES.version == version)
    # Archiving what an alias serves would break its callers silently; make them choose.
    if names := sorted(conn.execute(query).scalars()):
        raise ConflictError(
            f"{name}@{version} is still the target of {', '.join(names)}; "
            "move those aliases before archiving it"
        )
    where = (_VERSIONS.model == name) & (_VERSIONS.number == version)
    conn.execute(update(registry_versions).where(where).values(stage="archived"))


def check_no_open_promotion(conn: Connection, name: str, stage: str, now: datetime) -> None:
    # Lapsed requests must not block a fresh one; mark them on the way.
    pending = (_PROMOTIONS.model == name) & (_PROMOTIONS.status == "pending")
    conn.execute(
        update(registry_promotions)
        .where(pending, _PROMOTIONS.expires_at <= now)
        .values(status="expired", decided_at=now)
    )
    query = select(_PROMOTIONS.id, _PROMOTIONS.version).where(pending, _PROMOTIONS.stage == stage)
    if (found := conn.execute(query).first()) is not None:
        raise ConflictError(
            f"promotion {found.id} of {name}@{found.version} to {stage} is already pending"
        )


def insert_evaluation(
    conn: Connection,
    name: str,
    version: int,
    metric: str,
    value: float,
    dataset: str | None,
    run_id: str | None,
    actor: Actor,
    now: datetime,
) -> dict[str, Any]:
    values: dict[str, Any] = {"id": f"evl_{uuid.uuid4().hex[:20]}", "model": name}
    values |= {"version": version, "metric": metric, "value": float(value)}
    values |= {"dataset": dataset, "run_id": run_id, "created_by": actor.name, "created_at": now}
    conn.execute(insert(registry_evaluations).values(**values))
    # Evaluations are lineage too: the result feeds the version; the run that produced it and
    # the dataset it ran on feed the result.
    evaluation = m.EntityRef("evaluation", values["id"])
    insert_link(
        conn, evaluation, m.EntityRef("model_version", f"{name}@{version}"), "evaluates", actor, now
    )
    if run_id:
        insert_link(conn, m.EntityRef("run", run_id), evaluation, "produced", actor, now)
    if dataset:
        insert_link(conn, m.EntityRef("dataset", dataset), evaluation, "evaluated_on", actor, now)
    return values
