"""The trace view through the SDK (`Keel().trace`) and the CLI (`keel trace`), against a real
Keel server that requires keys: who may see which request's trace."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from keel.cli.app import app
from keel.sdk import Keel, KeelAPIError
from tests.conftest import remote_settings
from tests.fakes.openai import FakeOpenAI
from tests.governance.test_governance_sdk import ADMIN_KEY, serve_keel
from tests.monitoring.test_traces import deployment


@pytest.fixture
def served(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, dict[str, str]]]:
    """A server, and keys of alice (developer, team ml), carol (viewer, ml) and bob (viewer,
    team ops)."""
    settings = remote_settings(
        keel_home,
        [deployment("gpt-test", fake_openai_url)],
        auth={"admin_key": ADMIN_KEY},
        cache={"enabled": False},
    )
    with serve_keel(settings) as url, Keel(url, api_key=ADMIN_KEY) as admin:
        admin.governance.orgs.create("acme")
        for team in ("ml", "ops"):
            admin.governance.teams.create(team, org="acme")
        admin.governance.users.create("alice", team="ml")
        admin.governance.users.create("carol", team="ml", role="viewer")
        admin.governance.users.create("bob", team="ops", role="viewer")
        keys = {
            name: admin.governance.keys.create(user=name)["secret"]
            for name in ("alice", "carol", "bob")
        }
        monkeypatch.setenv("KEEL_URL", url)
        monkeypatch.setenv("COLUMNS", "250")
        yield url, keys


def ask(url: str, key: str) -> str:
    response = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "gpt-test", "messages": [{"role": "user", "content": "hello there"}]},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 200, response.text
    request_id: str = response.headers["x-keel-request-id"]
    return request_id


def written_trace(url: str, key: str, request_id: str) -> dict[str, Any]:
    """The trace, once the record and the spans are written (both go in batches)."""
    deadline = time.monotonic() + 30
    with Keel(url, api_key=key) as client:
        while True:
            try:
                return client.trace(request_id)
            except KeelAPIError as exc:
                if exc.status_code != 404 or time.monotonic() > deadline:
                    raise
            time.sleep(0.05)


def keel(*args: str, key: str) -> Any:
    return CliRunner().invoke(app, list(args), env={"KEEL_API_KEY": key}, catch_exceptions=False)


def test_the_trace_through_the_sdk_and_who_may_see_it(served: tuple[str, dict[str, str]]) -> None:
    url, keys = served
    request_id = ask(url, keys["alice"])
    found = written_trace(url, keys["alice"], request_id)
    assert found["request_id"] == request_id
    assert [span["name"] for span in found["spans"]] == ["chat gpt-test", "chat up-model"]
    # A viewer of alice's team sees it; one of another team is told it doesn't exist.
    with Keel(url, api_key=keys["carol"]) as carol:
        assert carol.trace(request_id)["trace_id"] == found["trace_id"]
    with Keel(url, api_key=keys["bob"]) as bob, pytest.raises(KeelAPIError) as refused:
        bob.trace(request_id)
    assert refused.value.status_code == 404
    with Keel(url) as anonymous, pytest.raises(KeelAPIError) as unauthenticated:
        anonymous.trace(request_id)
    assert unauthenticated.value.status_code == 401


def test_keel_trace_prints_the_tree_with_durations(served: tuple[str, dict[str, str]]) -> None:
    url, keys = served
    request_id = ask(url, keys["alice"])
    found = written_trace(url, keys["alice"], request_id)

    result = keel("trace", request_id, key=keys["alice"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert f"trace {found['trace_id']}" in lines[0] and request_id in lines[0]
    root = next(line for line in lines if "chat gpt-test" in line)
    attempt = next(line for line in lines if "chat up-model" in line)
    # The attempt is drawn under the root (deeper), each with its duration.
    assert attempt.index("chat up-model") > root.index("chat gpt-test")
    root_ms = found["spans"][0]["duration_ms"]
    assert f"{root_ms:.1f} ms" in root
    assert "deployment gpt-test" in attempt and "outcome ok" in attempt
    # "hello there" in (2 words), "Echo: hello there" out (3 words).
    assert "in 2 · out 3" in root and "status 200" in root

    detailed = keel("trace", request_id, "--attributes", key=keys["alice"])
    assert "gen_ai.usage.output_tokens = 3" in detailed.output
    assert "gen_ai.provider.name = openai" in detailed.output

    as_json = keel("trace", request_id, "--json", key=keys["alice"])
    assert json.loads(as_json.stdout) == found

    missing = keel("trace", "req_missing", key=keys["alice"])
    assert missing.exit_code != 0
    assert "no request record 'req_missing'" in missing.output
    hidden = keel("trace", request_id, key=keys["bob"])
    assert hidden.exit_code != 0 and "no request record" in hidden.output
