"""Drift through the Python SDK and the CLI, against a real server on loopback."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from keel.cli.app import app
from keel.sdk import Keel, KeelAPIError
from keel.server import create_app
from tests.fakes.openai import FakeOpenAI
from tests.fakes.server import serve_on_loopback
from tests.monitoring.drift_helpers import CODING, COOKING, ask, capture_settings, now, prompt


@pytest.fixture
def served(keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str) -> Iterator[str]:
    settings = capture_settings(keel_home, fake_openai_url)
    with serve_on_loopback(create_app(settings), lifespan="on") as url:
        yield url


def _send(url: str, prompts: list[str]) -> None:
    for text in prompts:
        reply = httpx.post(f"{url}/v1/chat/completions", json=ask(text), timeout=60)
        assert reply.status_code == 200, reply.text


def keel(url: str, *args: str) -> tuple[int, str]:
    env = {"KEEL_URL": url, "COLUMNS": "200"}
    result = CliRunner().invoke(app, ["drift", *args], env=env, catch_exceptions=False)
    return result.exit_code, result.output


def test_sdk_and_cli_compute_and_list_drift(served: str) -> None:
    rng = random.Random(2)
    start = now()
    _send(served, [prompt(rng, COOKING, 3, 6) for _ in range(30)])
    middle = now()
    _send(served, [prompt(rng, CODING, 12, 18) for _ in range(30)])
    end = now()
    reference, current = f"{start}/{middle}", f"{middle}/{end}"
    with Keel(served) as client:
        # Payloads are embedded in the background, after the answers went out: ask again
        # until every request and vector of both windows is in.
        for _ in range(600):
            report = client.drift("gpt", window=current, reference_window=reference)
            checks = {check["name"]: check for check in report["checks"]}
            if report["current_count"] == 30 and checks["embedding_output"]["note"] is None:
                break
            time.sleep(0.2)
        history = client.drift.history("gpt")
        with pytest.raises(KeelAPIError) as bad:
            client.drift("gpt", window="fortnight")
    assert report["drifted"] is True
    assert report["current_count"] == report["reference_count"] == 30
    assert history[0]["id"] == report["id"]
    assert bad.value.status_code == 400
    assert bad.value.param == "window"

    code, output = keel(
        served, "gpt", "--window", current, "--reference-window", reference, "--json"
    )
    assert code == 0, output
    cli_report = json.loads(output)
    assert cli_report["drifted"] is True
    assert cli_report["metrics"]["psi_input_tokens"] == pytest.approx(
        report["metrics"]["psi_input_tokens"]
    )

    code, output = keel(served, "gpt", "--window", current, "--reference-window", reference)
    assert code == 0, output
    assert "DRIFT" in output
    assert "input_tokens.psi" in output

    code, output = keel(served, "gpt", "--history", "--json")
    assert code == 0, output
    assert [row["id"] for row in json.loads(output)][1] == cli_report["id"]

    code, output = keel(served, "gpt", "--window", "fortnight")
    assert code == 1
    assert "window" in output
