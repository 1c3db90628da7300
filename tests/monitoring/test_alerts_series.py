"""The series rules compare, from request records placed in known windows: nearest-rank
percentiles, rate of change against the window before, z-score against the trailing windows,
quota rejections and the cache hit rate. Expected values are worked out by hand below."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import remote_settings, running_app
from tests.monitoring.alert_helpers import evaluate

END = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _record(minutes_before_end: float, **fields: Any) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex,
        "created_at": END - timedelta(minutes=minutes_before_end),
        "endpoint": "chat.completions",
        "model_requested": "gpt-series",
        "status_code": 200,
        "latency_ms": 100.0,
        "stream": False,
        "attempts": 1,
        "error_message": None,
        "cache": None,
        "prompt_tokens": None,
        "completion_tokens": None,
        "cost_usd": None,
        **fields,
    }


def _rule(name: str, metric: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "metric": metric, "model": "gpt-series", "window": "1m", **fields}


RULES = [
    # 20 calls of 100, 200, ... 2000 ms in the last minute: the nearest-rank p95 is the 19th
    # value (ceil(0.95 * 20) = 19), 1.9 s; p50 the 10th, 1.0 s.
    _rule("p95-over", "latency_p95_seconds", op=">=", threshold=1.9),
    _rule("p95-not-over", "latency_p95_seconds", op=">", threshold=1.9),
    _rule("p50", "latency_p50_seconds", op="<=", threshold=1.0),
    # 20 calls now against 8 the minute before: (20 - 8) / 8 = 1.5.
    _rule("traffic-jump", "request_count", condition="rate_of_change", threshold=1.4),
    _rule("traffic-jump-small", "request_count", condition="rate_of_change", threshold=1.6),
    # The minute before: 8 calls ... and 4 windows before with 8, 10, 12, 10 calls: mean 10,
    # sample standard deviation sqrt((4 + 0 + 4 + 0 + ...)/...) computed in the test.
    _rule("traffic-anomaly", "request_count", condition="anomaly", baseline_windows=4, threshold=3),
    # Two quota refusals, one upstream 429 that is not one.
    _rule("quota", "quota_rejections", op=">=", threshold=2),
    _rule("quota-three", "quota_rejections", op=">=", threshold=3),
    # 3 hits and 1 miss among cacheable calls: 0.75.
    _rule("cache-cold", "cache_hit_rate", op="<", threshold=0.8),
    # Tokens and cost over the last minute: 20 calls x (10 in, 5 out), 0.002 USD each.
    _rule("tokens", "total_tokens", op=">=", threshold=300),
    _rule("spend", "cost_usd", op=">", threshold=0.039),
]


def _records() -> list[dict[str, Any]]:
    rows = [
        _record(
            0.5, latency_ms=100.0 * (i + 1), prompt_tokens=10, completion_tokens=5, cost_usd=0.002
        )
        for i in range(20)
    ]
    # Earlier windows (minute 1-2, 2-3, 3-4, 4-5 and 5-6 before the end) for the baselines.
    for minute, count in ((1.5, 8), (2.5, 10), (3.5, 12), (4.5, 10)):
        rows += [_record(minute) for _ in range(count)]
    quota = "quota exceeded: team support tokens per minute (limit 100); retry in 12 s"
    rows[0].update(status_code=429, error_message=quota)
    rows[1].update(status_code=429, error_message=quota)
    rows[2].update(status_code=429, error_message="every deployment of 'x' is rate limited")
    for row, cache in zip(rows[3:9], ["hit", "hit", "hit", "miss", None, None], strict=True):
        row["cache"] = cache
    return rows


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_series_values(backend: str, keel_home: Path, request: pytest.FixtureRequest) -> None:
    extra = {"database_url": request.getfixturevalue("postgres_url")} if backend != "sqlite" else {}
    settings = remote_settings(keel_home, [], alerts={"enabled": False, "rules": RULES}, **extra)
    async with running_app(settings) as (app, client):
        app.state.keel.database.insert_records(_records())
        report = await evaluate(app, END)
        fired = sorted(t["rule"] for t in report.transitions if t["to"] == "firing")
        assert fired == [
            "cache-cold",
            "p50",
            "p95-over",
            "quota",
            "spend",
            "tokens",
            "traffic-anomaly",
            "traffic-jump",
        ]
        states = {s["rule"]: s for s in (await client.get("/v1/keel/alerts")).json()["data"]}
        assert states["p95-not-over"]["value"] == pytest.approx(1.9)
        assert states["p50"]["value"] == pytest.approx(1.0)
        assert states["traffic-jump"]["value"] == 20
        assert states["quota-three"]["value"] == 2
        assert states["cache-cold"]["value"] == pytest.approx(0.75)
        assert states["tokens"]["value"] == 300
        assert states["spend"]["value"] == pytest.approx(0.04)

        history = (await client.get("/v1/keel/alerts/history?limit=1000")).json()["data"]
        observed = {h["rule"]: h["details"]["observed"] for h in history}
        assert observed["traffic-jump"] == pytest.approx(1.5)
        # Baseline 8 (1-2 min), 10, 12, 10: mean 10, sample variance (4+0+4+0)/3.
        assert observed["traffic-anomaly"] == pytest.approx((20 - 10) / (8 / 3) ** 0.5)
