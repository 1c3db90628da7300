"""What the alert tests share: the fake receivers on loopback, settings with every kind of
notifier, and a few shortcuts for driving the evaluator."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from keel.config import Settings
from keel.monitoring.alerts import AlertEvaluator, EvaluationReport
from tests.conftest import remote_settings
from tests.fakes.server import serve_on_loopback
from tests.monitoring.alert_receivers import AlertReceivers

WEBHOOK_SECRET = "whsec-alerts-test-6f1d2c9e"
JIRA_EMAIL = "ops-bot@example.com"
JIRA_TOKEN = "jira-token-alerts-test-83b1"
MODEL = "gpt-alerts"
UPSTREAM_KEY = "sk-upstream-alerts-test-1234"


@pytest.fixture
def receivers(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[AlertReceivers, str]]:
    monkeypatch.setenv("ALERTS_TEST_WEBHOOK_SECRET", WEBHOOK_SECRET)
    monkeypatch.setenv("ALERTS_TEST_JIRA_TOKEN", JIRA_TOKEN)
    fake = AlertReceivers(WEBHOOK_SECRET, JIRA_EMAIL, JIRA_TOKEN, slow_for_s=3.0)
    with serve_on_loopback(fake.app()) as url:
        yield fake, url


def notifiers(url: str) -> list[dict[str, Any]]:
    """Slack, a signed webhook and Jira, all on the fake receivers; quick retries."""
    quick = {"timeout_s": 5, "max_attempts": 2, "backoff_initial_s": 0}
    return [
        {"name": "slack", "type": "slack", "url": f"{url}/slack/hook", **quick},
        {
            "name": "hook",
            "type": "webhook",
            "url": f"{url}/webhook",
            "secret_env": "ALERTS_TEST_WEBHOOK_SECRET",
            **quick,
        },
        {
            "name": "jira",
            "type": "jira",
            "url": url,
            "email": JIRA_EMAIL,
            "api_token_env": "ALERTS_TEST_JIRA_TOKEN",
            "project": "OPS",
            "labels": ["llm gateway"],
            **quick,
        },
    ]


def alert_settings(
    home: Path,
    openai_url: str,
    *,
    rules: list[dict[str, Any]],
    notifier_configs: list[dict[str, Any]],
    **extra: Any,
) -> Settings:
    """One upstream model, no response cache, the schedule off (tests evaluate themselves)."""
    model = {
        "id": MODEL,
        "provider": "openai",
        "api_base": openai_url,
        "api_key": UPSTREAM_KEY,
    }
    return remote_settings(
        home,
        [model],
        cache={"enabled": False},
        alerts={"enabled": False, "rules": rules, "notifiers": notifier_configs},
        **extra,
    )


def evaluator_of(app: Any) -> AlertEvaluator:
    found: AlertEvaluator = app.state.keel.alerts.evaluator
    return found


async def evaluate(app: Any, at: datetime) -> EvaluationReport:
    """One evaluation at `at`, and every delivery it started, finished and recorded."""
    evaluator = evaluator_of(app)
    report = await evaluator.evaluate_once(now=at)
    await evaluator.settle()
    return report


async def chat(client: httpx.AsyncClient, count: int = 1) -> list[int]:
    statuses = []
    for index in range(count):
        body = {"model": MODEL, "messages": [{"role": "user", "content": f"hello {index}"}]}
        response = await client.post("/v1/chat/completions", json=body)
        statuses.append(response.status_code)
    return statuses


def now() -> datetime:
    return datetime.now(UTC)
