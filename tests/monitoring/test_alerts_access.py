"""Who may read alerts and change rules, with keys: viewers read, maintainers write, and every
rule change lands in the audit log with who made it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.monitoring.feedback_helpers import Served, governed

RULE = {"name": "team-errors", "metric": "error_rate", "threshold": 0.1, "team": "ops"}


@pytest.fixture
async def served(tmp_path: Path, keel_home: Path, fake_openai_url: str) -> AsyncIterator[Served]:
    async with governed(keel_home, fake_openai_url, f"sqlite:///{tmp_path / 'keel.db'}") as it:
        yield it


async def test_viewers_read_and_maintainers_write(served: Served) -> None:
    client = served.client

    async def call(user: str, method: str, path: str, **kwargs: object) -> int:
        response = await client.request(method, path, headers=served.bearer(user), **kwargs)
        return response.status_code

    for user in ("vic", "ana"):  # viewer, developer
        assert await call(user, "POST", "/v1/keel/alerts/rules", json=RULE) == 403
        assert await call(user, "GET", "/v1/keel/alerts") == 200
        assert await call(user, "GET", "/v1/keel/alerts/rules") == 200
        assert await call(user, "GET", "/v1/keel/alerts/history") == 200
        assert await call(user, "GET", "/v1/keel/alerts/deliveries") == 200
    assert await call("ana-app", "GET", "/v1/keel/alerts") == 403  # an inference-only key
    assert await call("max", "POST", "/v1/keel/alerts/rules", json=RULE) == 201
    created = await client.get("/v1/keel/alerts/rules/team-errors", headers=served.bearer("vic"))
    assert created.json()["created_by"] == "max"
    assert await call("vic", "POST", "/v1/keel/alerts/rules/team-errors/disable") == 403
    assert await call("max", "POST", "/v1/keel/alerts/rules/team-errors/disable") == 200
    assert await call("ana", "DELETE", "/v1/keel/alerts/rules/team-errors") == 403
    assert await call("max", "DELETE", "/v1/keel/alerts/rules/team-errors") == 200

    await served.app.state.keel.audit.flush()
    entries = await client.get(
        "/v1/keel/audit", params={"action": "alerts.*"}, headers=served.bearer("admin")
    )
    assert [(e["actor"], e["action"], e["target"]) for e in entries.json()["data"]] == [
        ("max", "alerts.rule.create", "team-errors"),
        ("max", "alerts.rule.disable", "team-errors"),
        ("max", "alerts.rule.delete", "team-errors"),
    ]
