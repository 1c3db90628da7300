"""Two Keel instances on one PostgreSQL (and one Redis, when configured) evaluate the same
rules: one holds the lease and evaluates, so every transition is notified exactly once; when
it stops, the other takes over."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from keel.monitoring.alerts import EvaluationReport
from tests.conftest import REDIS_URL, flushed_records, running_app
from tests.fakes.openai import ErrorReply, FakeOpenAI
from tests.monitoring.alert_helpers import (
    MODEL,
    alert_settings,
    chat,
    evaluator_of,
    notifiers,
    now,
    receivers,
)
from tests.monitoring.alert_receivers import AlertReceivers

__all__ = ["receivers"]

RULE = {"name": "errors-high", "metric": "error_count", "model": MODEL, "threshold": 0}


async def _round(apps: list[Any], at: Any) -> list[EvaluationReport]:
    """Both replicas evaluate at once, as their schedules would; then their deliveries end."""
    reports = await asyncio.gather(*(evaluator_of(app).evaluate_once(now=at) for app in apps))
    for app in apps:
        await evaluator_of(app).settle()
    return list(reports)


@pytest.mark.parametrize("lease", ["redis", "database"])
async def test_two_replicas_notify_once_per_transition(
    lease: str,
    tmp_path: Path,
    fake_openai: FakeOpenAI,
    fake_openai_url: str,
    receivers: tuple[AlertReceivers, str],
    postgres_url: str,
    redis_prefix: str,
) -> None:
    fake, url = receivers
    shared: dict[str, Any] = {"database_url": postgres_url}
    if lease == "redis":
        shared |= {"redis_url": REDIS_URL, "redis_prefix": redis_prefix}
    stacks = [AsyncExitStack(), AsyncExitStack()]
    apps, clients = [], []
    try:
        for index, stack in enumerate(stacks):
            settings = alert_settings(
                tmp_path / f"replica-{index}",
                fake_openai_url,
                rules=[RULE],
                notifier_configs=notifiers(url)[:2],
                **shared,
            )
            app, client = await stack.enter_async_context(running_app(settings))
            apps.append(app)
            clients.append(client)

        fake_openai.faults[MODEL] = ErrorReply(400, "refused")
        assert await chat(clients[0], 2) == [400, 400]
        await flushed_records(apps[0])
        start = now()

        firing = await _round(apps, start + timedelta(seconds=1))
        assert sorted(report.leader for report in firing) == [False, True]
        leader = next(i for i, report in enumerate(firing) if report.leader)
        assert [t["to"] for t in firing[leader].transitions] == ["firing"]
        steady = await _round(apps, start + timedelta(seconds=30))
        assert [report.leader for report in steady] == [i == leader for i in range(2)]
        resolved = await _round(apps, start + timedelta(minutes=10))
        assert [t["to"] for t in resolved[leader].transitions] == ["resolved"]

        assert [m.body["text"].split(" ")[0] for m in fake.slack] == ["[FIRING]", "[RESOLVED]"]
        assert [event.body["event"] for event in fake.webhook] == [
            "alert.firing",
            "alert.resolved",
        ]
        # Either replica answers with the shared history.
        follower = 1 - leader
        history = (await clients[follower].get("/v1/keel/alerts/history")).json()["data"]
        assert [(h["from_state"], h["to_state"]) for h in history] == [
            ("firing", "resolved"),
            ("inactive", "firing"),
        ]

        # The leader stops (and gives the lease back): the other replica evaluates now.
        await stacks[leader].aclose()
        assert await chat(clients[follower], 1) == [400]
        await flushed_records(apps[follower])
        (report,) = await _round([apps[follower]], now() + timedelta(seconds=1))
        assert report.leader
        assert [t["to"] for t in report.transitions] == ["firing"]
        assert len(fake.slack) == 3 and len(fake.webhook) == 3
    finally:
        for stack in stacks:
            await stack.aclose()
