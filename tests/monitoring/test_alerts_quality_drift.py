"""Rules on quality (from labelled feedback posted over HTTP) and on drift (from a drift
report computed over HTTP) read the shared numbers of `keel.monitoring.quality` and
`keel.monitoring.drift`."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from tests.conftest import flushed_records, running_app
from tests.fakes.openai import FakeOpenAI
from tests.monitoring.alert_helpers import MODEL, alert_settings, evaluate, now

RULES = [
    # 1 right answer out of 4: accuracy 0.25.
    {
        "name": "accuracy-low",
        "metric": "quality_accuracy",
        "model": MODEL,
        "op": "<",
        "threshold": 0.5,
        "window": "1h",
    },
    {
        "name": "accuracy-very-low",
        "metric": "quality_accuracy",
        "model": MODEL,
        "op": "<",
        "threshold": 0.2,
        "window": "1h",
    },
    {
        "name": "labels",
        "metric": "quality_count",
        "model": MODEL,
        "op": ">=",
        "threshold": 4,
        "window": "1h",
    },
    # A drift report on a model nothing was captured for: it exists and has not drifted.
    {"name": "drifted", "metric": "drift_detected", "model": MODEL, "threshold": 0},
    {
        "name": "drift-checked",
        "metric": "drift_detected",
        "model": MODEL,
        "op": ">=",
        "threshold": 0,
    },
]


async def test_quality_and_drift_rules(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    settings = alert_settings(keel_home, fake_openai_url, rules=RULES, notifier_configs=[])
    async with running_app(settings) as (app, client):
        request_ids = []
        for _ in range(4):
            body = {"model": MODEL, "messages": [{"role": "user", "content": "classify me"}]}
            response = await client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200
            request_ids.append(response.headers["x-keel-request-id"])
        await flushed_records(app)
        for request_id, label in zip(request_ids, ["spam", "ham", "ham", "ham"], strict=True):
            feedback = {"request_id": request_id, "label": label, "expected": "spam"}
            posted = await client.post("/v1/keel/feedback", json=feedback)
            assert posted.status_code < 300, posted.text
        drift = await client.get(f"/v1/keel/drift/{MODEL}", params={"window": "1h"})
        assert drift.status_code == 200, drift.text

        report = await evaluate(app, now() + timedelta(seconds=1))
        assert report.errors == {}
        fired = sorted(t["rule"] for t in report.transitions if t["to"] == "firing")
        assert fired == ["accuracy-low", "drift-checked", "labels"]
        states = {s["rule"]: s for s in (await client.get("/v1/keel/alerts")).json()["data"]}
        assert states["accuracy-low"]["value"] == 0.25
        assert states["labels"]["value"] == 4
        assert states["drifted"]["value"] == 0
