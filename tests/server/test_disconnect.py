"""A client that gives up before its answer begins stops the work it caused: the attempt in
flight and every retry it would have led to are cancelled, and the call is recorded as 499.
Run against a real server on loopback, where a closed connection is a real disconnect."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from keel.server import create_app
from tests.conftest import remote_settings
from tests.fakes.openai import FakeOpenAI, Hang
from tests.fakes.server import serve_on_loopback
from tests.routing.test_resilience import chat, priority_group, upstream


def _records(base_url: str) -> list[dict[str, object]]:
    response = httpx.get(f"{base_url}/v1/keel/requests", timeout=10)
    assert response.status_code == 200
    rows: list[dict[str, object]] = response.json()["data"]
    return rows


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_cancels_the_attempts_and_is_recorded_499(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str, stream: bool
) -> None:
    # Every attempt would hang past the client's patience, and time out into a retry.
    fake_openai.faults[upstream("a")] = Hang(30)
    group = priority_group(
        "chat",
        fake_openai_url,
        "a",
        retry={"max_attempts": 3, "backoff_initial_s": 0, "backoff_max_s": 0, "deadline_s": 60},
    )
    group["deployments"][0]["timeout_s"] = 5
    settings = remote_settings(
        keel_home, [], groups=[group], server={"record_flush_interval_s": 0.05}
    )
    with serve_on_loopback(create_app(settings), lifespan="on") as base_url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{base_url}/v1/chat/completions", json=chat(stream=stream), timeout=0.5)
        # The record is written once the call has ended; bounded wait, no timing asserted.
        deadline = time.monotonic() + 20
        records = _records(base_url)
        while not records and time.monotonic() < deadline:
            time.sleep(0.05)
            records = _records(base_url)
        assert [r["status_code"] for r in records] == [499]
        assert records[0]["attempts"] == 1
        assert fake_openai.count() == 1  # no retry was sent after the client left
        # The deployment was not blamed for the client's departure.
        states = httpx.get(f"{base_url}/v1/keel/deployments", timeout=10).json()["data"]
        [state] = states
        assert (state["state"], state["failures"], state["in_flight"]) == ("closed", 0, 0)
