"""The gateway's in-memory view of the registry: fresh after writes, robust to a bad row."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import update

from keel.identity import Actor
from keel.registry import Registry, RegistryView, parse_card
from keel.registry.models import EntityRef
from keel.registry.tables import registry_versions
from keel.store import Database

ALICE = Actor("alice", frozenset({"developer"}))


def card(name: str) -> object:
    return parse_card({"name": name, "gateway_model": "gpt"})


async def test_a_write_during_a_reload_is_not_lost(registry: Registry) -> None:
    first_read = threading.Event()
    release = threading.Event()
    real_snapshot = registry.snapshot

    def slow_snapshot() -> object:
        result = real_snapshot()
        first_read.set()
        release.wait(5)
        return result

    registry.snapshot = slow_snapshot  # type: ignore[method-assign]
    view = RegistryView(registry, refresh_interval_s=3600)
    registry.create(card("a"), ALICE)  # type: ignore[arg-type]
    view.changed()
    await asyncio.to_thread(first_read.wait, 5)
    registry.create(card("b"), ALICE)  # type: ignore[arg-type]  # after the reload read
    view.changed()
    release.set()
    await view.settle()
    assert view.resolve("a") is not None
    assert view.resolve("b") is not None
    await view.close()


async def test_an_unreadable_card_does_not_hide_the_others(
    registry: Registry, registry_database: Database
) -> None:
    registry.create(card("good"), ALICE)  # type: ignore[arg-type]
    registry.create(card("bad"), ALICE)  # type: ignore[arg-type]
    with registry_database.engine.begin() as connection:
        connection.execute(
            update(registry_versions)
            .where(registry_versions.c.model == "bad")
            .values(card={"name": "bad", "benchmark": {"accuracy": "very"}})
        )
    view = RegistryView(registry)
    await view.start()
    assert view.resolve("good") is not None
    await view.close()


def test_linking_the_same_edge_concurrently_is_a_no_op(registry: Registry) -> None:
    registry.create(card("m"), ALICE)  # type: ignore[arg-type]
    upstream, downstream = EntityRef("dataset", "faq-v1"), EntityRef("model_version", "m@1")

    def link(_: int) -> str:
        return registry.link(upstream, downstream, relation="trained_on", actor=ALICE).relation

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert set(pool.map(link, range(32))) == {"trained_on"}
    tree = registry.lineage(downstream, direction="upstream")
    assert [child.entity for child in tree.upstream].count(upstream) == 1
