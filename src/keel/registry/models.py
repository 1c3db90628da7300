"""What the registry hands back: frozen values, detached from the database session."""

from __future__ import annotations

import logging
import operator
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from keel.errors import InvalidRequestError, PermissionDeniedError
from keel.identity import Actor
from keel.registry.cards import parse_card

if TYPE_CHECKING:
    from keel.registry.cards import CardLimits, ModelCard

__all__ = [
    "GATE_OPS",
    "STAGES",
    "STAGE_ALIASES",
    "AliasMove",
    "Approval",
    "EntityRef",
    "Evaluation",
    "LineageLink",
    "LineageNode",
    "ModelSnapshot",
    "ModelSummary",
    "Promotion",
    "QualityGate",
    "Stage",
    "VersionInfo",
    "VersionRecord",
    "VersionSnapshot",
]

Stage = Literal["draft", "staging", "production", "archived"]
STAGES: tuple[Stage, ...] = ("draft", "staging", "production", "archived")
# Entering a stage moves the alias of the same name; these aliases move only by promotion.
STAGE_ALIASES: dict[str, Stage] = {"staging": "staging", "production": "production"}
GateOp = Literal[">=", "<=", ">", "<"]
GATE_OPS: tuple[GateOp, ...] = (">=", "<=", ">", "<")
PromotionStatus = Literal["pending", "approved", "rejected", "expired", "cancelled"]


log = logging.getLogger("keel.registry")


@dataclass(frozen=True, slots=True)
class Evaluation:
    id: str
    model: str
    version: int
    metric: str
    value: float
    dataset: str | None
    run_id: str | None
    created_by: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class VersionInfo:
    number: int
    digest: str
    stage: Stage
    created_at: datetime
    created_by: str


@dataclass(frozen=True, slots=True)
class VersionRecord:
    name: str
    number: int
    digest: str
    stage: Stage
    created_at: datetime
    created_by: str
    card: ModelCard
    evaluations: tuple[Evaluation, ...] = ()
    # False when add_version found the card unchanged and returned the latest version instead.
    created: bool = True

    @property
    def reference(self) -> str:
        return f"{self.name}@{self.number}"


@dataclass(frozen=True, slots=True)
class ModelSummary:
    name: str
    archived: bool
    created_at: datetime
    created_by: str
    latest: int
    versions: tuple[VersionInfo, ...]
    aliases: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AliasMove:
    model: str
    alias: str
    from_version: int | None
    to_version: int
    actor: str
    reason: str
    approval_id: str | None
    at: datetime


@dataclass(frozen=True, slots=True)
class Approval:
    approver: str
    decision: Literal["approve", "reject"]
    comment: str | None
    at: datetime


@dataclass(frozen=True, slots=True)
class Promotion:
    id: str
    model: str
    version: int
    stage: Stage
    requested_by: str
    status: PromotionStatus
    comment: str | None
    created_at: datetime
    expires_at: datetime | None
    decided_at: datetime | None
    overridden_by: str | None
    approvals: tuple[Approval, ...] = ()


@dataclass(frozen=True, slots=True)
class QualityGate:
    metric: str
    op: GateOp
    threshold: float
    # None: any dataset's result for the metric counts; otherwise only that dataset's.
    dataset: str | None = None

    def describe(self) -> str:
        where = f" on {self.dataset}" if self.dataset else ""
        return f"{self.metric}{where} {self.op} {self.threshold:g}"


@dataclass(frozen=True, slots=True)
class EntityRef:
    kind: str  # dataset, prompt, run, evaluation, model_version ("name@3"), deployment, ...
    id: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"


@dataclass(frozen=True, slots=True)
class LineageLink:
    upstream: EntityRef
    downstream: EntityRef
    relation: str
    created_by: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class LineageNode:
    entity: EntityRef
    # How this node relates to its parent in the tree; None at the root.
    relation: str | None = None
    upstream: tuple[LineageNode, ...] = ()
    downstream: tuple[LineageNode, ...] = ()
    # True where the walk met an entity already on its own path and stopped there.
    cycle: bool = False


@dataclass(frozen=True, slots=True)
class VersionSnapshot:
    stage: Stage
    gateway_model: str | None
    limits: CardLimits


@dataclass(frozen=True, slots=True)
class ModelSnapshot:
    archived: bool
    latest: int
    aliases: dict[str, int]
    versions: dict[int, VersionSnapshot]


# --- rules and row conversions shared by the service and its queries -----------------------------

WRITERS = ("admin", "maintainer", "developer")
REVIEWERS = ("admin", "maintainer")
NEXT_STAGE: dict[str, Stage] = {"draft": "staging", "staging": "production"}
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}


def require(actor: Actor, roles: tuple[str, ...], action: str) -> None:
    if not actor.has_any(*roles):
        raise PermissionDeniedError(f"{actor.name} needs one of {', '.join(roles)} to {action}")


def checked_name(name: str) -> str:
    # '@' separates a name from its alias or version in references, so a name can't hold one.
    if not name or name != name.strip() or "@" in name or len(name) > 255:
        raise InvalidRequestError(f"invalid registry model name {name!r}", param="name")
    return name


def failed_gates(gates: Sequence[QualityGate], results: Sequence[Evaluation]) -> list[str]:
    """Each gate `results` don't pass, described with the value that failed it."""
    failures = []
    for gate in gates:
        values = [
            result.value
            for result in results
            if result.metric == gate.metric and gate.dataset in (None, result.dataset)
        ]
        # The most recent result counts: re-running an evaluation replaces its verdict.
        if not values:
            failures.append(f"{gate.describe()} (no result)")
        elif not _OPS[gate.op](values[-1], gate.threshold):
            failures.append(f"{gate.describe()} (actual {values[-1]:g})")
    return failures


def utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything the registry stores is UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def latest_number(stages: Mapping[int, str]) -> int:
    """The newest version that isn't archived (the newest of all when every one is)."""
    live = [number for number, stage in stages.items() if stage != "archived"]
    return max(live or stages or [0])


def version_record(
    row: Mapping[Any, Any],
    evaluations: Sequence[Evaluation] = (),
    *,
    card: ModelCard | None = None,
    created: bool = True,
) -> VersionRecord:
    return VersionRecord(
        name=row["model"],
        number=row["number"],
        digest=row["digest"],
        stage=row["stage"],
        created_at=utc(row["created_at"]),
        created_by=row["created_by"],
        card=card if card is not None else parse_card(row["card"]),
        evaluations=tuple(evaluations),
        created=created,
    )


def evaluation_of(row: Mapping[Any, Any]) -> Evaluation:
    return Evaluation(
        id=row["id"],
        model=row["model"],
        version=row["version"],
        metric=row["metric"],
        value=row["value"],
        dataset=row["dataset"],
        run_id=row["run_id"],
        created_by=row["created_by"],
        created_at=utc(row["created_at"]),
    )


def alias_move_of(row: Mapping[Any, Any]) -> AliasMove:
    return AliasMove(
        model=row["model"],
        alias=row["alias"],
        from_version=row["from_version"],
        to_version=row["to_version"],
        actor=row["actor"],
        reason=row["reason"],
        approval_id=row["approval_id"],
        at=utc(row["at"]),
    )


def promotion_of(
    row: Mapping[Any, Any], approvals: Sequence[Approval], now: datetime | None = None
) -> Promotion:
    expires_at = utc(row["expires_at"]) if row["expires_at"] is not None else None
    status = row["status"]
    # A lapsed request reads as expired even before anyone touches it again.
    if status == "pending" and expires_at is not None and now is not None and expires_at <= now:
        status = "expired"
    return Promotion(
        id=row["id"],
        model=row["model"],
        version=row["version"],
        stage=row["stage"],
        requested_by=row["requested_by"],
        status=status,
        comment=row["comment"],
        created_at=utc(row["created_at"]),
        expires_at=expires_at,
        decided_at=utc(row["decided_at"]) if row["decided_at"] is not None else None,
        overridden_by=row["overridden_by"],
        approvals=tuple(approvals),
    )


def _pointers(aliases: Iterable[Any]) -> dict[str, dict[str, int]]:
    found: dict[str, dict[str, int]] = defaultdict(dict)
    for row in aliases:
        found[row.model][row.alias] = row.version
    return found


def summaries_of(
    models: Iterable[Any], versions: Iterable[Any], aliases: Iterable[Any]
) -> list[ModelSummary]:
    """One summary per model row, from version and alias rows (which may span models)."""
    infos: dict[str, list[VersionInfo]] = defaultdict(list)
    for row in versions:
        info = VersionInfo(row.number, row.digest, row.stage, utc(row.created_at), row.created_by)
        infos[row.model].append(info)
    pointers = _pointers(aliases)
    return [
        ModelSummary(
            name=model.name,
            archived=model.archived,
            created_at=utc(model.created_at),
            created_by=model.created_by,
            latest=latest_number({info.number: info.stage for info in infos[model.name]}),
            versions=tuple(infos[model.name]),
            aliases=dict(pointers[model.name]),
        )
        for model in models
    ]


def snapshot_from(
    models: Iterable[Any], versions: Iterable[Any], aliases: Iterable[Any]
) -> dict[str, ModelSnapshot]:
    by_model: dict[str, dict[int, VersionSnapshot]] = defaultdict(dict)
    for row in versions:
        try:
            card = parse_card(row.card)
        except ValueError:
            # One unreadable card must not keep every other model from being served.
            log.error("registry card %s@%s could not be read; not served", row.model, row.number)
            continue
        snapshot = VersionSnapshot(row.stage, card.gateway_model, card.limits)
        by_model[row.model][row.number] = snapshot
    pointers = _pointers(aliases)
    return {
        model.name: ModelSnapshot(
            archived=model.archived,
            latest=latest_number({n: v.stage for n, v in by_model[model.name].items()}),
            aliases=dict(pointers[model.name]),
            versions=dict(by_model[model.name]),
        )
        for model in models
    }
