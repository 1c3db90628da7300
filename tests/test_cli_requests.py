"""`keel requests` against a real server: readable at 80 columns, everything with --wide."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from keel.cli.app import app
from keel.server import create_app
from tests.conftest import remote_settings
from tests.fakes.openai import FakeOpenAI
from tests.fakes.server import serve_on_loopback

MODEL = "support-assistant-eu-west-production"


@pytest.fixture
def served(keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str) -> Iterator[str]:
    deployment = {
        "id": "azure-eu-west-gpt-4o-mini-primary",
        "provider": "openai_compatible",
        "model": "gpt-4o-mini",
        "api_base": fake_openai_url,
        "api_key": "sk-test",
    }
    settings = remote_settings(
        keel_home,
        [],
        groups=[{"id": MODEL, "deployments": [deployment]}],
        server={"record_flush_interval_s": 0.01},
    )
    with serve_on_loopback(create_app(settings), lifespan="on") as url:
        yield url


def keel(url: str, *args: str, columns: int) -> str:
    env = {"KEEL_URL": url, "COLUMNS": str(columns)}
    result = CliRunner().invoke(app, ["requests", *args], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _wait_for_records(url: str, count: int) -> list[dict[str, object]]:
    for _ in range(500):
        rows = httpx.get(f"{url}/v1/keel/requests").json()["data"]
        if len(rows) >= count:
            return list(rows)
        httpx.get(f"{url}/healthz")
    raise AssertionError("the records were never written")


def test_requests_fit_80_columns_and_wide_adds_the_rest(served: str) -> None:
    for _ in range(2):
        reply = httpx.post(
            f"{served}/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hello there"}]},
        )
        assert reply.status_code == 200
    rows = _wait_for_records(served, 2)

    narrow = keel(served, columns=80)
    lines = narrow.splitlines()
    assert all(len(line) <= 80 for line in lines), narrow
    body = [line for line in lines if "200" in line]
    assert len(body) == 2, narrow
    for line, row in zip(body, rows, strict=True):
        # Time of day, the whole model id, status, tokens: nothing cut with an ellipsis.
        assert str(row["created_at"])[11:19] in line
        assert MODEL in line
        assert f"{row['prompt_tokens']}/{row['completion_tokens']}" in line
    assert "…" not in narrow
    assert "azure-eu-west" not in narrow  # the deployment waits for --wide

    wide = keel(served, "--wide", columns=250)
    for row in rows:
        assert str(row["id"]) in wide
        assert str(row["created_at"])[:10] in wide
    assert "azure-eu-west-gpt-4o-mini-primary" in wide

    as_json = json.loads(keel(served, "--json", columns=80))
    assert [row["id"] for row in as_json] == [row["id"] for row in rows]
