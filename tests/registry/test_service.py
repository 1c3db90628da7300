"""The registry service on SQLite and PostgreSQL: versions, aliases, promotions, gates, lineage."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import func, select

from keel.errors import ConflictError, InvalidRequestError, NotFoundError, PermissionDeniedError
from keel.identity import Actor
from keel.registry.cards import ModelCard, parse_card
from keel.registry.models import EntityRef, LineageNode, QualityGate
from keel.registry.service import Registry
from keel.registry.tables import registry_versions
from tests.registry.conftest import FakeClock

DEV = Actor("dev", frozenset({"developer"}))
ALICE = Actor("alice", frozenset({"maintainer"}))
BOB = Actor("bob", frozenset({"maintainer"}))
CAROL = Actor("carol", frozenset({"maintainer"}))
ROOT = Actor("root", frozenset({"admin"}))
VIEWER = Actor("vic", frozenset({"viewer"}))


def card(name: str = "curie", **fields: Any) -> ModelCard:
    return parse_card({"name": name, "description": "help-center assistant", **fields})


def promote(registry: Registry, version: int, stage: Any, approver: Actor = BOB) -> Any:
    request = registry.request_promotion("curie", version, stage, ALICE)
    return registry.approve(request.id, approver)


# --- models and versions -------------------------------------------------------------------------


def test_create_and_duplicate(registry: Registry) -> None:
    first = registry.create(card(), DEV)
    assert (first.name, first.number, first.stage, first.created) == ("curie", 1, "draft", True)
    assert first.created_by == "dev" and first.card.description == "help-center assistant"
    with pytest.raises(ConflictError):
        registry.create(card(), DEV)
    registry.archive("curie", DEV)
    with pytest.raises(ConflictError):  # archived names stay taken
        registry.create(card(), DEV)
    with pytest.raises(PermissionDeniedError):
        registry.create(card("other"), VIEWER)
    with pytest.raises(InvalidRequestError):
        registry.create(card("bad@name"), DEV)


def test_versions_digests_and_unchanged_cards(registry: Registry) -> None:
    registry.create(card(), DEV)
    second = registry.add_version("curie", card(description="second"), DEV)
    assert second.number == 2 and second.created
    same = registry.add_version("curie", card(description="second"), DEV)
    assert (same.number, same.created, same.digest) == (2, False, second.digest)
    assert registry.add_version("curie", card(description="third"), DEV).number == 3
    summary = registry.get("curie")
    assert [v.number for v in summary.versions] == [1, 2, 3] and summary.latest == 3
    assert len({v.digest for v in summary.versions}) == 3
    assert registry.version("curie", 2).card.description == "second"
    with pytest.raises(NotFoundError):
        registry.add_version("nobody", card("nobody"), DEV)
    with pytest.raises(InvalidRequestError):
        registry.add_version("curie", card("other"), DEV)
    with pytest.raises(NotFoundError):
        registry.version("curie", 9)


def test_list_models_and_diff(registry: Registry) -> None:
    registry.create(card(), DEV)
    registry.create(card("bohr"), DEV)
    registry.add_version("curie", card(description="second", license="mit"), DEV)
    assert [m.name for m in registry.list_models()] == ["bohr", "curie"]
    changes = registry.diff("curie", 1, 2)
    assert "description" in changes and "license" in changes
    assert registry.diff("curie", 2, 2) == {}
    registry.archive("bohr", DEV)
    assert [m.name for m in registry.list_models()] == ["curie"]
    assert [m.name for m in registry.list_models(include_archived=True)] == ["bohr", "curie"]


def test_resolve_forms_and_404s(registry: Registry) -> None:
    registry.create(card(), DEV)
    registry.add_version("curie", card(description="second"), DEV)
    assert registry.resolve("curie").number == 2  # no production alias: the latest
    assert registry.resolve("curie@1").number == 1
    registry.move_alias("curie", "champion", 1, DEV, reason="baseline")
    assert registry.resolve("curie@champion").number == 1
    promote(registry, 1, "staging")
    promote(registry, 1, "production")
    assert registry.resolve("curie").number == 1  # production wins over latest
    with pytest.raises(NotFoundError, match="nobody"):
        registry.resolve("nobody")
    with pytest.raises(NotFoundError, match="version 7"):
        registry.resolve("curie@7")
    with pytest.raises(NotFoundError, match="alias 'canary'"):
        registry.resolve("curie@canary")


# --- aliases -------------------------------------------------------------------------------------


def test_alias_moves_history_and_alias_at(registry: Registry, clock: FakeClock) -> None:
    registry.create(card(), DEV)
    registry.add_version("curie", card(description="second"), DEV)
    before = clock.advance()
    clock.advance()
    first = registry.move_alias("curie", "champion", 1, DEV, reason="baseline")
    assert (first.from_version, first.to_version) == (None, 1)
    middle = clock.advance()
    clock.advance()
    second = registry.move_alias("curie", "champion", 2, DEV, reason="won the A/B")
    assert (second.from_version, second.to_version, second.reason) == (1, 2, "won the A/B")
    history = registry.alias_history("curie", "champion")
    assert [(m.from_version, m.to_version, m.actor) for m in history] == [
        (None, 1, "dev"),
        (2 - 1, 2, "dev"),
    ]
    assert registry.alias_at("curie", "champion", before) is None
    assert registry.alias_at("curie", "champion", middle) == 1
    assert registry.alias_at("curie", "champion", clock.advance()) == 2
    assert registry.get("curie").aliases == {"champion": 2}
    with pytest.raises(PermissionDeniedError):
        registry.move_alias("curie", "champion", 1, VIEWER, reason="x")
    with pytest.raises(NotFoundError):
        registry.move_alias("curie", "champion", 5, DEV, reason="x")


def test_compare_and_set(registry: Registry) -> None:
    registry.create(card(), DEV)
    registry.add_version("curie", card(description="second"), DEV)
    with pytest.raises(ConflictError):  # the alias points nowhere yet
        registry.move_alias("curie", "champion", 1, DEV, reason="x", expected_version=2)
    registry.move_alias("curie", "champion", 1, DEV, reason="x")
    with pytest.raises(ConflictError):
        registry.move_alias("curie", "champion", 2, DEV, reason="x", expected_version=2)
    moved = registry.move_alias("curie", "champion", 2, DEV, reason="x", expected_version=1)
    assert moved.to_version == 2


def test_stage_aliases_move_only_through_promotions(registry: Registry) -> None:
    registry.create(card(), DEV)
    with pytest.raises(ConflictError, match="approved promotion"):
        registry.move_alias("curie", "production", 1, ROOT, reason="skip the queue")
    approved = promote(registry, 1, "staging")
    registry.add_version("curie", card(description="second"), DEV)
    promote(registry, 2, "staging")
    # Rolling back to an earlier approved version reuses that approval.
    back = registry.move_alias(
        "curie", "staging", 1, ALICE, reason="rollback", approval_id=approved.id
    )
    assert back.approval_id == approved.id and registry.get("curie").aliases["staging"] == 1
    with pytest.raises(ConflictError):  # the approval was for version 1, not 2
        registry.move_alias("curie", "production", 1, ALICE, reason="x", approval_id=approved.id)


def test_concurrent_moves_of_one_alias_have_one_winner(registry: Registry) -> None:
    registry.create(card(), DEV)
    for n in range(2, 10):
        registry.add_version("curie", card(description=f"v{n}"), DEV)
    registry.move_alias("curie", "champion", 1, DEV, reason="start")
    barrier = threading.Barrier(8)

    def move(version: int) -> str:
        barrier.wait()
        try:
            registry.move_alias(
                "curie", "champion", version, DEV, reason="race", expected_version=1
            )
        except ConflictError:
            return "conflict"
        return "moved"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(move, range(2, 10)))
    assert sorted(outcomes) == ["conflict"] * 7 + ["moved"]
    assert len(registry.alias_history("curie", "champion")) == 2


def test_concurrent_add_version_numbers_stay_sequential(registry: Registry) -> None:
    registry.create(card(), DEV)
    barrier = threading.Barrier(6)

    def add(n: int) -> int:
        barrier.wait()
        return registry.add_version("curie", card(description=f"v{n}"), DEV).number

    with ThreadPoolExecutor(6) as pool:
        numbers = sorted(pool.map(add, range(6)))
    assert numbers == [2, 3, 4, 5, 6, 7]
    with registry.database.engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(registry_versions)).scalar_one()
    assert count == 7


# --- promotions ----------------------------------------------------------------------------------


def test_promotion_request_and_approval(registry: Registry) -> None:
    registry.create(card(), DEV)
    request = registry.request_promotion("curie", 1, "staging", ALICE, comment="ready")
    assert request.status == "pending" and request.requested_by == "alice"
    with pytest.raises(ConflictError):  # one pending request per model and stage
        registry.request_promotion("curie", 1, "staging", DEV)
    with pytest.raises(PermissionDeniedError):
        registry.approve(request.id, ALICE)  # the requester
    with pytest.raises(PermissionDeniedError):
        registry.approve(request.id, VIEWER)
    with pytest.raises(PermissionDeniedError):
        registry.approve(request.id, DEV)
    approved = registry.approve(request.id, BOB, comment="lgtm")
    assert approved.status == "approved" and approved.decided_at is not None
    assert [(a.approver, a.decision, a.comment) for a in approved.approvals] == [
        ("bob", "approve", "lgtm")
    ]
    assert registry.version("curie", 1).stage == "staging"
    assert registry.get("curie").aliases == {"staging": 1}
    move = registry.alias_history("curie", "staging")[-1]
    assert (move.approval_id, move.actor, move.to_version) == (request.id, "bob", 1)
    with pytest.raises(ConflictError):
        registry.approve(request.id, CAROL)  # no longer pending
    assert [p.id for p in registry.promotions(name="curie", status="approved")] == [request.id]


def test_promotion_stage_rules(registry: Registry) -> None:
    registry.create(card(), DEV)
    with pytest.raises(InvalidRequestError):
        registry.request_promotion("curie", 1, "production", ALICE)  # draft skips staging
    with pytest.raises(InvalidRequestError):
        registry.request_promotion("curie", 1, "archived", ALICE)
    with pytest.raises(NotFoundError):
        registry.request_promotion("curie", 4, "staging", ALICE)
    with pytest.raises(PermissionDeniedError):
        registry.request_promotion("curie", 1, "staging", VIEWER)


def test_reject(registry: Registry) -> None:
    registry.create(card(), DEV)
    request = registry.request_promotion("curie", 1, "staging", DEV)
    with pytest.raises(PermissionDeniedError):
        registry.reject(request.id, DEV)
    rejected = registry.reject(request.id, ALICE, comment="not yet")
    assert rejected.status == "rejected" and rejected.approvals[0].decision == "reject"
    assert registry.version("curie", 1).stage == "draft"
    with pytest.raises(ConflictError):
        registry.reject(request.id, BOB)
    # A rejected request no longer blocks a new one.
    assert registry.request_promotion("curie", 1, "staging", DEV).status == "pending"


def test_expiry(registry: Registry, clock: FakeClock) -> None:
    registry.create(card(), DEV)
    request = registry.request_promotion("curie", 1, "staging", DEV, expires_in_s=60)
    clock.advance(61)
    assert registry.promotions(status="expired")[0].id == request.id
    with pytest.raises(ConflictError, match="expired"):
        registry.approve(request.id, ALICE)
    assert registry.promotion(request.id).status == "expired"  # recorded, not rolled back
    assert registry.version("curie", 1).stage == "draft"
    assert registry.request_promotion("curie", 1, "staging", DEV).status == "pending"


def test_two_approvals_required(registry_database: Any, clock: FakeClock) -> None:
    registry = Registry(registry_database, approvals_required=2, clock=clock)
    registry.create(card(), DEV)
    request = registry.request_promotion("curie", 1, "staging", DEV)
    once = registry.approve(request.id, ALICE)
    assert once.status == "pending" and registry.version("curie", 1).stage == "draft"
    with pytest.raises(ConflictError):
        registry.approve(request.id, ALICE)  # the same person twice doesn't count twice
    twice = registry.approve(request.id, BOB)
    assert twice.status == "approved" and len(twice.approvals) == 2
    assert registry.version("curie", 1).stage == "staging"


def test_quality_gates(registry: Registry) -> None:
    registry.create(card(), DEV)
    gates = [
        QualityGate("accuracy", ">=", 0.9, dataset="golden"),
        QualityGate("latency_p95_ms", "<=", 800),
    ]
    with pytest.raises(PermissionDeniedError):
        registry.set_gates("curie", "staging", gates, DEV)
    assert registry.set_gates("curie", "staging", gates, ALICE) == gates
    assert registry.gates("curie", "staging") == gates
    registry.record_evaluation(
        "curie", 1, metric="accuracy", value=0.85, dataset="golden", actor=DEV
    )
    request = registry.request_promotion("curie", 1, "staging", DEV)
    with pytest.raises(InvalidRequestError) as failed:
        registry.approve(request.id, ALICE)
    assert failed.value.code == "quality_gate_failed"
    assert "accuracy on golden >= 0.9 (actual 0.85)" in failed.value.message
    assert "latency_p95_ms <= 800 (no result)" in failed.value.message
    assert registry.promotion(request.id).status == "pending"  # nothing was half-applied
    registry.record_evaluation(
        "curie", 1, metric="accuracy", value=0.93, dataset="golden", actor=DEV
    )
    registry.record_evaluation("curie", 1, metric="latency_p95_ms", value=640, actor=DEV)
    approved = registry.approve(request.id, ALICE)
    assert approved.status == "approved" and approved.overridden_by is None
    assert [e.value for e in registry.version("curie", 1).evaluations] == [0.85, 0.93, 640]


def test_admin_override_is_recorded(registry: Registry) -> None:
    registry.create(card(), DEV)
    registry.set_gates("curie", "staging", [QualityGate("accuracy", ">=", 0.9)], ALICE)
    request = registry.request_promotion("curie", 1, "staging", DEV)
    with pytest.raises(PermissionDeniedError):
        registry.approve(request.id, ALICE, override_gates=True)  # maintainers can't override
    approved = registry.approve(request.id, ROOT, override_gates=True)
    assert approved.status == "approved" and approved.overridden_by == "root"


# --- archive, lineage, snapshot ------------------------------------------------------------------


def test_archive_keeps_rows(registry: Registry) -> None:
    registry.create(card(), DEV)
    registry.add_version("curie", card(description="second"), DEV)
    registry.move_alias("curie", "champion", 2, DEV, reason="x")
    with pytest.raises(ConflictError, match="champion"):
        registry.archive("curie", DEV, version=2)
    pending = registry.request_promotion("curie", 1, "staging", DEV)
    summary = registry.archive("curie", DEV, version=1)
    assert [v.stage for v in summary.versions] == ["archived", "draft"]
    assert registry.promotion(pending.id).status == "cancelled"
    assert registry.resolve("curie@1").stage == "archived"  # still readable by reference
    summary = registry.archive("curie", DEV)
    assert summary.archived and len(summary.versions) == 2
    assert registry.resolve("curie").number == 2
    with pytest.raises(ConflictError):
        registry.add_version("curie", card(description="third"), DEV)
    snapshot = registry.snapshot()["curie"]
    assert snapshot.archived and snapshot.versions[1].stage == "archived"


def test_snapshot(registry: Registry) -> None:
    registry.create(card(gateway_model="gpt", constraints=["Max sequence length 50 tokens"]), DEV)
    registry.add_version("curie", card(description="second"), DEV)
    promote(registry, 1, "staging")
    snap = registry.snapshot()
    assert set(snap) == {"curie"}
    model = snap["curie"]
    assert (model.archived, model.latest, model.aliases) == (False, 2, {"staging": 1})
    assert model.versions[1].gateway_model == "gpt" and model.versions[1].stage == "staging"
    assert model.versions[1].limits.max_input_tokens == 50


def test_lineage(registry: Registry) -> None:
    registry.create(card(), DEV)
    data, run = EntityRef("dataset", "tickets-2026"), EntityRef("run", "r1")
    version = EntityRef("model_version", "curie@1")
    registry.link(data, run, relation="trained_on", actor=DEV)
    registry.link(run, version, relation="produced", actor=DEV)
    again = registry.link(run, version, relation="produced", actor=ALICE)
    assert again.created_by == "dev"  # the same edge twice is one edge
    registry.link(version, EntityRef("deployment", "prod-eu"), relation="serves", actor=DEV)
    evaluation = registry.record_evaluation("curie", 1, metric="accuracy", value=0.9, actor=DEV)
    with pytest.raises(NotFoundError):
        registry.link(run, EntityRef("model_version", "curie@9"), relation="x", actor=DEV)

    tree = registry.lineage(version)
    assert {(n.entity, n.relation) for n in tree.upstream} == {
        (run, "produced"),
        (EntityRef("evaluation", evaluation.id), "evaluates"),
    }
    via_run = next(n for n in tree.upstream if n.entity == run)
    assert via_run.upstream == (LineageNode(data, "trained_on"),)
    assert [n.entity.id for n in tree.downstream] == ["prod-eu"]
    down = registry.lineage(data, direction="downstream")
    assert down.upstream == () and down.downstream[0].downstream[0].entity == version
    assert registry.lineage(version, depth=1).upstream[0].upstream == ()


def test_lineage_cycles_are_guarded(registry: Registry) -> None:
    a, b = EntityRef("workflow", "a"), EntityRef("workflow", "b")
    registry.link(a, b, relation="feeds", actor=DEV)
    registry.link(b, a, relation="feeds", actor=DEV)
    tree = registry.lineage(a, direction="downstream")
    assert tree.downstream[0].entity == b
    assert tree.downstream[0].downstream == (LineageNode(a, "feeds", cycle=True),)


def test_cards_owned_by_a_team_are_reviewed_by_that_team(registry: Registry) -> None:
    registry.create(card(owners=["team:ml", "alice"]), DEV)
    request = registry.request_promotion("curie", 1, "staging", DEV)
    outsider = Actor("olga", frozenset({"maintainer"}), team="ops")
    with pytest.raises(PermissionDeniedError) as refused:
        registry.approve(request.id, outsider)
    assert refused.value.code == "team_review_required" and "team ml" in refused.value.message
    with pytest.raises(PermissionDeniedError):
        registry.reject(request.id, outsider)
    member = Actor("mia", frozenset({"maintainer"}), team="ml")
    assert registry.approve(request.id, member).status == "approved"
    # An admin reviews anything; a card naming no team keeps the plain rule.
    second = registry.request_promotion("curie", 1, "production", DEV)
    assert registry.approve(second.id, ROOT).status == "approved"
