"""Alert rules evaluated over requests that went through the gateway: pending → firing →
resolved with history, one notification per transition to Slack, a signed webhook and Jira
(issue, then comments), the registry card's owners as recipients, and failing notifiers
recorded as failed deliveries while the others deliver. Time is passed to `evaluate_once`;
nothing sleeps."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import flushed_records, running_app
from tests.fakes.openai import ErrorReply, FakeOpenAI
from tests.monitoring.alert_helpers import (
    JIRA_TOKEN,
    MODEL,
    WEBHOOK_SECRET,
    alert_settings,
    chat,
    evaluate,
    notifiers,
    now,
    receivers,
)
from tests.monitoring.alert_receivers import AlertReceivers

__all__ = ["receivers"]

OWNERS = ["U024BE7LH", "dana@example.com", "team:ml-platform"]
ERRORS_RULE = {
    "name": "errors-high",
    "metric": "error_rate",
    "model": MODEL,
    "threshold": 0.25,
    "window": "5m",
    "for": "0s",
    "severity": "critical",
    "description": "More than a quarter of calls fail.",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url


async def _fail(fake: FakeOpenAI, client: Any, failures: int, successes: int) -> None:
    fake.faults[MODEL] = ErrorReply(400, "the upstream refused this request")
    assert await chat(client, failures) == [400] * failures
    del fake.faults[MODEL]
    assert await chat(client, successes) == [200] * successes


async def test_error_rate_fires_resolves_and_fires_again(
    keel_home: Path,
    fake_openai: FakeOpenAI,
    fake_openai_url: str,
    receivers: tuple[AlertReceivers, str],
    database_url: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="keel")
    fake, url = receivers
    settings = alert_settings(
        keel_home,
        fake_openai_url,
        rules=[ERRORS_RULE],
        notifier_configs=notifiers(url),
        database_url=database_url,
    )
    async with running_app(settings) as (app, client):
        card = {"name": "support-bot", "gateway_model": MODEL, "owners": OWNERS}
        assert (await client.post("/v1/keel/registry/models", json=card)).status_code == 201
        # 3 failures out of 4 calls: an error rate of 0.75, over the 0.25 threshold.
        await _fail(fake_openai, client, failures=3, successes=1)
        await flushed_records(app)
        start = now()

        report = await evaluate(app, start + timedelta(seconds=1))
        assert report.leader
        assert [(t["from"], t["to"]) for t in report.transitions] == [("inactive", "firing")]
        states = (await client.get("/v1/keel/alerts")).json()["data"]
        assert [(s["rule"], s["state"], s["value"]) for s in states] == [
            ("errors-high", "firing", 0.75)
        ]

        # Slack: text plus blocks, the owners mentioned (a Slack user id as a real mention).
        assert len(fake.slack) == 1
        slack = fake.slack[0].body
        assert slack["text"].startswith("[FIRING] errors-high (critical)")
        assert "<@U024BE7LH>" in slack["text"]
        assert "@dana@example.com" in slack["text"]
        assert "@ml-platform" in slack["text"]
        assert [block["type"] for block in slack["blocks"]] == ["header", "section", "context"]
        # The signed webhook: verified by the receiver, recipients from the registry card.
        assert len(fake.webhook) == 1
        event = fake.webhook[0].body
        assert event["event"] == "alert.firing"
        assert event["rule"] == "errors-high"
        assert event["observed"] == 0.75
        assert event["threshold"] == 0.25
        assert event["filters"] == {"model": MODEL}
        assert event["model_version"] == "support-bot@1"
        assert event["recipients"] == {
            "people": ["U024BE7LH", "dana@example.com"],
            "teams": ["ml-platform"],
        }
        assert fake.webhook[0].headers["x-keel-event"] == "alert.firing"
        # Jira: one issue, owners in the description, team and severity as labels.
        assert len(fake.jira_issues) == 1 and not fake.jira_comments
        fields = fake.jira_issues[0].body["fields"]
        assert fields["project"] == {"key": "OPS"}
        assert fields["issuetype"] == {"name": "Task"}
        assert "Owners: U024BE7LH, dana@example.com" in fields["description"]
        assert "Owning teams: ml-platform" in fields["description"]
        assert {"keel-alert", "severity-critical", "team-ml-platform", "llm-gateway"} <= set(
            fields["labels"]
        )
        assert not fake.refused

        # Still over the threshold a moment later: still firing, nobody notified again.
        report = await evaluate(app, start + timedelta(seconds=30))
        assert report.transitions == []
        assert (len(fake.slack), len(fake.webhook), len(fake.jira_issues)) == (1, 1, 1)

        # Ten minutes on, the failures have left the 5-minute window: resolved.
        report = await evaluate(app, start + timedelta(minutes=10))
        assert [(t["from"], t["to"]) for t in report.transitions] == [("firing", "resolved")]
        assert len(fake.slack) == 2 and fake.slack[1].body["text"].startswith("[RESOLVED]")
        assert fake.webhook[1].body["event"] == "alert.resolved"
        assert fake.webhook[1].body["observed"] is None  # no calls in the window
        assert len(fake.jira_issues) == 1
        assert [c.path for c in fake.jira_comments] == ["/rest/api/2/issue/OPS-1/comment"]

        # Failing again: the same Jira issue gets a comment; no second issue.
        await _fail(fake_openai, client, failures=2, successes=0)
        await flushed_records(app)
        report = await evaluate(app, now() + timedelta(seconds=1))
        assert [(t["from"], t["to"]) for t in report.transitions] == [("resolved", "firing")]
        assert len(fake.jira_issues) == 1
        assert len(fake.jira_comments) == 2
        assert "[FIRING]" in fake.jira_comments[1].body["body"]
        assert len(fake.slack) == 3 and len(fake.webhook) == 3

        history = (await client.get("/v1/keel/alerts/history?rule=errors-high")).json()
        assert [(h["from_state"], h["to_state"]) for h in history["data"]] == [
            ("resolved", "firing"),
            ("firing", "resolved"),
            ("inactive", "firing"),
        ]
        assert history["data"][2]["value"] == 0.75
        assert history["data"][2]["details"]["threshold"] == 0.25

        deliveries = (await client.get("/v1/keel/alerts/deliveries")).json()["data"]
        assert len(deliveries) == 9
        assert {d["status"] for d in deliveries} == {"delivered"}
        jira = sorted((d["id"], d["reference"]) for d in deliveries if d["notifier"] == "jira")
        assert [reference for _, reference in jira] == ["OPS-1", "OPS-1", "OPS-1"]
        states = (await client.get("/v1/keel/alerts")).json()["data"]
        assert states[0]["tickets"] == {"jira": "OPS-1"}

        # Secrets never land in what Keel stores or logs.
        stored = json.dumps([deliveries, history, states])
        for secret in (WEBHOOK_SECRET, JIRA_TOKEN):
            assert secret not in stored
            assert secret not in caplog.text


async def test_for_duration_holds_pending_before_firing(
    keel_home: Path,
    fake_openai: FakeOpenAI,
    fake_openai_url: str,
    receivers: tuple[AlertReceivers, str],
) -> None:
    fake, url = receivers
    rules = [
        {**ERRORS_RULE, "name": "errors-sustained", "for": "2m"},
        # Pending for less than its `for` when the errors stop: back to inactive, never fired.
        {**ERRORS_RULE, "name": "errors-flapping", "for": "10m"},
    ]
    settings = alert_settings(
        keel_home, fake_openai_url, rules=rules, notifier_configs=notifiers(url)[:1]
    )
    async with running_app(settings) as (app, client):
        await _fail(fake_openai, client, failures=1, successes=1)
        await flushed_records(app)
        start = now()

        report = await evaluate(app, start + timedelta(seconds=1))
        moves = {t["rule"]: (t["from"], t["to"]) for t in report.transitions}
        assert moves == {
            "errors-sustained": ("inactive", "pending"),
            "errors-flapping": ("inactive", "pending"),
        }
        report = await evaluate(app, start + timedelta(seconds=61))
        assert report.transitions == []
        assert fake.slack == []

        report = await evaluate(app, start + timedelta(seconds=121))
        moves = {t["rule"]: (t["from"], t["to"]) for t in report.transitions}
        assert moves == {"errors-sustained": ("pending", "firing")}
        assert len(fake.slack) == 1
        assert fake.slack[0].body["text"].startswith("[FIRING] errors-sustained")
        states = {
            s["rule"]: s["state"] for s in (await client.get("/v1/keel/alerts")).json()["data"]
        }
        assert states == {"errors-sustained": "firing", "errors-flapping": "pending"}

        report = await evaluate(app, start + timedelta(minutes=6))
        moves = {t["rule"]: (t["from"], t["to"]) for t in report.transitions}
        assert moves == {
            "errors-sustained": ("firing", "resolved"),
            "errors-flapping": ("pending", "inactive"),
        }
        assert [m.body["text"].split(" ")[0] for m in fake.slack] == ["[FIRING]", "[RESOLVED]"]


async def test_a_timing_out_and_a_failing_notifier_do_not_stop_the_others(
    keel_home: Path,
    fake_openai: FakeOpenAI,
    fake_openai_url: str,
    receivers: tuple[AlertReceivers, str],
) -> None:
    fake, url = receivers
    configs = [
        {
            "name": "slow",
            "type": "slack",
            "url": f"{url}/slow",
            "timeout_s": 0.2,
            "max_attempts": 2,
            "backoff_initial_s": 0,
        },
        {
            "name": "broken",
            "type": "slack",
            "url": f"{url}/failing",
            "max_attempts": 3,
            "backoff_initial_s": 0,
        },
        *notifiers(url)[:1],
    ]
    rules = [
        ERRORS_RULE,
        {
            **ERRORS_RULE,
            "name": "any-traffic",
            "metric": "request_count",
            "threshold": 0,
            "notifiers": ["slack"],
        },
    ]
    settings = alert_settings(keel_home, fake_openai_url, rules=rules, notifier_configs=configs)
    async with running_app(settings) as (app, client):
        await _fail(fake_openai, client, failures=2, successes=0)
        await flushed_records(app)
        report = await evaluate(app, now() + timedelta(seconds=1))
        assert {t["rule"]: t["to"] for t in report.transitions} == {
            "errors-high": "firing",
            "any-traffic": "firing",
        }
        deliveries = (await client.get("/v1/keel/alerts/deliveries")).json()["data"]
        outcome = {(d["rule"], d["notifier"]): d for d in deliveries}
        assert set(outcome) == {
            ("errors-high", "slow"),
            ("errors-high", "broken"),
            ("errors-high", "slack"),
            ("any-traffic", "slack"),
        }
        slow = outcome[("errors-high", "slow")]
        assert (slow["status"], slow["attempts"]) == ("failed", 2)
        assert "no answer within 0.2 s" in slow["error"]
        broken = outcome[("errors-high", "broken")]
        assert (broken["status"], broken["attempts"], broken["http_status"]) == ("failed", 3, 500)
        assert outcome[("errors-high", "slack")]["status"] == "delivered"
        assert outcome[("any-traffic", "slack")]["status"] == "delivered"
        assert (fake.slow_calls, fake.failing_calls) == (2, 3)
        assert sorted(m.body["text"].split(":")[0] for m in fake.slack) == [
            "[FIRING] any-traffic (critical)",
            "[FIRING] errors-high (critical)",
        ]
