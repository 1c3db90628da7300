"""Drift end to end: traffic through the gateway with capture on, the bundled embedding model,
reports over REST, stored and read back, on SQLite and PostgreSQL."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from keel.errors import ConfigError
from keel.monitoring.drift import latest_drift
from keel.monitoring.payload_tables import request_payloads
from tests.conftest import running_app
from tests.fakes.openai import FakeOpenAI
from tests.monitoring.drift_helpers import CODING, COOKING, ask, capture_settings, now, prompt

EMBEDDING_BYTES = 384 * 4  # all-MiniLM-L6-v2 vectors, float32


async def send(client: httpx.AsyncClient, prompts: list[str], **headers: str) -> None:
    for text in prompts:
        reply = await client.post("/v1/chat/completions", json=ask(text), headers=headers)
        assert reply.status_code == 200, reply.text


async def settle(app: FastAPI) -> None:
    keel = app.state.keel
    await keel.recorder.flush()
    await keel.payload_capture.flush()


async def windows(
    app: FastAPI, client: httpx.AsyncClient, reference: list[str], current: list[str]
) -> tuple[str, str]:
    start = now()
    await send(client, reference)
    await settle(app)
    middle = now()
    await send(client, current)
    await settle(app)
    return f"{start}/{middle}", f"{middle}/{now()}"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url


def drifted_checks(report: dict[str, Any]) -> set[str]:
    return {check["name"] for check in report["checks"] if check["drifted"]}


async def test_a_shift_in_topic_and_length_is_flagged_and_stored(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str, database_url: str | None
) -> None:
    rng = random.Random(11)
    extra = {"database_url": database_url} if database_url else {}
    settings = capture_settings(keel_home, fake_openai_url, **extra)
    async with running_app(settings) as (app, client):
        reference, current = await windows(
            app,
            client,
            [prompt(rng, COOKING, 3, 6) for _ in range(40)],
            [prompt(rng, CODING, 12, 18) for _ in range(40)],
        )
        reply = await client.get(
            "/v1/keel/drift/gpt", params={"window": current, "reference_window": reference}
        )
        assert reply.status_code == 200, reply.text
        report = reply.json()
        history = (await client.get("/v1/keel/drift/gpt/history")).json()["data"]
        metrics_text = (await client.get("/metrics")).text
        latest = latest_drift(app.state.keel.database, model="gpt")
    assert report["drifted"] is True
    assert report["current_count"] == 40
    assert report["reference_count"] == 40
    assert report["reference"] == "window"
    found = drifted_checks(report)
    assert {"input_tokens.psi", "input_tokens.ks", "embedding_input", "embedding_output"} <= found
    # Nothing failed or was refused in either window.
    assert not {"error_rate", "refusal_rate", "pii_rate"} & found
    assert report["metrics"]["error_rate"] == 0.0
    # The p-value floor of a 200-permutation test: no permutation beat the real split.
    assert report["metrics"]["embedding_input_mmd_p"] == pytest.approx(1 / 201)
    assert [row["id"] for row in history] == [report["id"]]
    assert latest is not None
    assert latest["id"] == report["id"]
    assert latest["drifted"] is True
    assert latest["psi_input_tokens"] == pytest.approx(report["metrics"]["psi_input_tokens"])
    assert 'keel_drift_detected{model="gpt"} 1.0' in metrics_text


async def test_the_same_distribution_is_not_flagged(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    rng = random.Random(5)

    def mixed() -> str:
        words = rng.choice([COOKING, CODING])
        return prompt(rng, words, 4, 12)

    settings = capture_settings(keel_home, fake_openai_url)
    async with running_app(settings) as (app, client):
        reference, current = await windows(
            app, client, [mixed() for _ in range(40)], [mixed() for _ in range(40)]
        )
        reply = await client.get(
            "/v1/keel/drift/gpt", params={"window": current, "reference_window": reference}
        )
    report = reply.json()
    assert reply.status_code == 200, reply.text
    assert report["drifted"] is False, drifted_checks(report)
    by_name = {check["name"]: check for check in report["checks"]}
    # The checks ran (they were not skipped for want of data) and found nothing.
    for name in ("input_tokens.psi", "input_tokens.ks", "embedding_input", "embedding_output"):
        assert by_name[name]["p_value"] is not None, by_name[name]
    assert by_name["embedding_input"]["p_value"] >= 0.01


async def test_captured_payloads_are_masked_embedded_and_only_for_listed_models(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str, database_url: str | None
) -> None:
    extra: dict[str, Any] = {"database_url": database_url} if database_url else {}
    settings = capture_settings(
        keel_home,
        fake_openai_url,
        drift={"models": ["gpt"]},
        groups=[
            {
                "id": "other",
                "deployments": [
                    {"provider": "openai", "model": "gpt-4o-mini", "api_base": fake_openai_url}
                ],
            }
        ],
        **extra,
    )
    async with running_app(settings) as (app, client):
        first = await client.post(
            "/v1/chat/completions",
            json=ask("Please write to jane.doe@example.com about the invoice"),
        )
        second = await client.post("/v1/chat/completions", json=ask("hello", model="other"))
        await settle(app)
        with app.state.keel.database.engine.connect() as conn:
            rows = [dict(row._mapping) for row in conn.execute(select(request_payloads))]
    assert first.status_code == second.status_code == 200
    assert len(rows) == 1
    row = rows[0]
    assert row["request_id"] == first.headers["x-keel-request-id"]
    assert row["model"] == "gpt"
    assert "jane.doe@example.com" not in row["input_text"]
    assert "<EMAIL_ADDRESS>" in row["input_text"]
    # The fake upstream echoes the prompt: the answer is masked as well.
    assert "jane.doe@example.com" not in row["output_text"]
    assert row["output_text"].startswith("Echo: ")
    assert row["finish_reason"] == "stop"
    assert len(row["input_embedding"]) == len(row["output_embedding"]) == EMBEDDING_BYTES
    vector = np.frombuffer(row["input_embedding"], dtype="<f4")
    # all-MiniLM-L6-v2 vectors come normalized.
    assert float(np.linalg.norm(vector)) == pytest.approx(1.0, abs=1e-3)


async def test_capture_off_stores_nothing(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    settings = capture_settings(keel_home, fake_openai_url, drift={"capture": False})
    async with running_app(settings) as (app, client):
        assert app.state.keel.payload_capture is None
        reply = await client.post("/v1/chat/completions", json=ask("hello there"))
        await app.state.keel.recorder.flush()
        with app.state.keel.database.engine.connect() as conn:
            rows = list(conn.execute(select(request_payloads)))
    assert reply.status_code == 200
    assert rows == []


async def test_benchmark_reference_reads_the_linked_run(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    rng = random.Random(3)
    settings = capture_settings(keel_home, fake_openai_url)
    async with running_app(settings) as (app, client):
        created = await client.post(
            "/v1/keel/registry/models",
            json={"name": "helpdesk", "type": "Generative", "gateway_model": "gpt"},
        )
        assert created.status_code in (200, 201), created.text
        evaluation = await client.post(
            "/v1/keel/registry/models/helpdesk/versions/1/evaluations",
            json={"metric": "accuracy", "value": 0.9, "dataset": "tickets", "run_id": "bench-7"},
        )
        assert evaluation.status_code in (200, 201), evaluation.text
        await app.state.keel.registry_changed()
        # The benchmark run goes through the gateway, tagged with its run id.
        for _ in range(30):
            reply = await client.post(
                "/v1/chat/completions",
                json=ask(prompt(rng, COOKING, 3, 6), model="helpdesk"),
                headers={"x-keel-run-id": "bench-7"},
            )
            assert reply.status_code == 200, reply.text
        start = now()
        for _ in range(30):
            await client.post(
                "/v1/chat/completions", json=ask(prompt(rng, CODING, 12, 18), model="helpdesk")
            )
        await settle(app)
        reply = await client.get(
            "/v1/keel/drift/helpdesk",
            params={"window": f"{start}/{now()}", "reference": "benchmark"},
        )
        no_run = await client.get(
            "/v1/keel/drift/gpt", params={"reference": "benchmark", "window": "1h"}
        )
    assert reply.status_code == 200, reply.text
    report = reply.json()
    assert report["reference"] == "benchmark"
    assert report["run_id"] == "bench-7"
    assert report["registry_version"] == "helpdesk@1"
    assert report["reference_count"] == 30
    assert report["current_count"] == 30
    assert report["metrics"]["accuracy_reference"] == pytest.approx(0.9)
    assert report["drifted"] is True
    assert "embedding_input" in drifted_checks(report)
    # "gpt" is a gateway model, not a registry one: it has no benchmark to compare with.
    assert no_run.status_code == 400
    assert no_run.json()["error"]["param"] == "reference"


BAD_INPUT = [
    ({"window": "soon"}, "window"),
    ({"window": "0h"}, "window"),
    ({"window": "2026-01-02T00:00:00Z/2026-01-01T00:00:00Z"}, "window"),
    ({"reference_window": "yesterday"}, "reference_window"),
    ({"until": "noon"}, "until"),
    ({"reference": "benchmark", "reference_window": "1h"}, "reference_window"),
]


async def test_bad_input_is_a_400_naming_the_field(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    settings = capture_settings(keel_home, fake_openai_url)
    async with running_app(settings) as (_app, client):
        await client.post("/v1/chat/completions", json=ask("hello"))
        replies = [
            (await client.get("/v1/keel/drift/gpt", params=params), param)
            for params, param in BAD_INPUT
        ]
    for reply, param in replies:
        assert reply.status_code == 400, reply.text
        error = reply.json()["error"]
        assert error["param"] == param
        assert error["message"]


async def test_unknown_model_and_reference_kind(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    settings = capture_settings(keel_home, fake_openai_url)
    async with running_app(settings) as (_app, client):
        unknown = await client.get("/v1/keel/drift/no-such-model")
        kind = await client.get("/v1/keel/drift/gpt", params={"reference": "yesterday"})
        empty_history = await client.get("/v1/keel/drift/no-such-model/history")
    assert unknown.status_code == 404
    assert "no-such-model" in unknown.json()["error"]["message"]
    assert 400 <= kind.status_code < 500
    assert "error" in kind.json()
    assert empty_history.json()["data"] == []


async def test_capture_needs_an_embedding_model(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    settings = capture_settings(
        keel_home, fake_openai_url, drift={"embedding_model": "no-such-embedder"}
    )
    with pytest.raises(ConfigError, match=r"drift\.embedding_model"):
        async with running_app(settings):
            pass
