"""Two `keel serve` processes sharing PostgreSQL and Redis hold one quota between them, and see
each other's key changes: through the version they poll, and through Redis pub/sub even when
they never poll."""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import create_engine, text

from tests.test_end_to_end import free_port, wait_ready

ADMIN_KEY = "replica-test-admin-key-0123456789abcdef"
REDIS_URL = "redis://127.0.0.1:6379/0"
LIMIT = 25
REQUESTS = 200


def _start(config: Path, home: Path, database_url: str) -> tuple[str, subprocess.Popen[str]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    env.update(
        KEEL_HOME=str(home),
        KEEL_CONFIG=str(config),
        KEEL_DATABASE_URL=database_url,
        KEEL_REDIS_URL=REDIS_URL,
        KEEL_ADMIN_KEY=ADMIN_KEY,
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "keel", "serve", "--port", str(port)],
        env=env,
        stdout=(home.parent / f"{home.name}.log").open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )
    return f"http://127.0.0.1:{port}", process


@contextmanager
def _serving(
    tmp_path: Path,
    fake_openai_url: str,
    postgres_url: str,
    redis_prefix: str,
    *,
    refresh_interval_s: float,
) -> Iterator[list[str]]:
    config = tmp_path / "keel.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "local_models": {"chat": False, "embeddings": False},
                "models": [
                    {
                        "id": "fake-model",
                        "provider": "openai",
                        "api_base": fake_openai_url,
                        "api_key": "sk-upstream",
                    }
                ],
                "auth": {"refresh_interval_s": refresh_interval_s},
                "cache": {"enabled": False},
                "redis_prefix": redis_prefix,
            }
        )
    )
    started = [_start(config, tmp_path / f"home-{n}", postgres_url) for n in range(2)]
    try:
        for url, process in started:
            wait_ready(url, process, timeout_s=60)
        yield [url for url, _ in started]
    finally:
        for _, process in started:
            process.terminate()
        for _, process in started:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture
def replicas(
    tmp_path: Path, fake_openai_url: str, postgres_url: str, redis_prefix: str
) -> Iterator[list[str]]:
    with _serving(
        tmp_path, fake_openai_url, postgres_url, redis_prefix, refresh_interval_s=0.2
    ) as urls:
        yield urls


@pytest.fixture
def replicas_that_never_poll(
    tmp_path: Path, fake_openai_url: str, postgres_url: str, redis_prefix: str
) -> Iterator[list[str]]:
    """An hour between polls: whatever reaches the other replica within the test came through
    Redis."""
    with _serving(
        tmp_path, fake_openai_url, postgres_url, redis_prefix, refresh_interval_s=3600
    ) as urls:
        yield urls


def _wait_outside_minute_edge() -> None:
    """Quota windows are calendar minutes: firing across a boundary would start a new window
    mid-test (and rightly admit more). Wait until a burst of a few seconds fits in one."""
    while 60 - (time.time() % 60) < 15:
        time.sleep(0.5)


def test_two_replicas_admit_exactly_the_limit(
    replicas: list[str], postgres_url: str, fake_openai_url: str
) -> None:
    first, second = replicas
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    team = f"team-{os.getpid()}-{time.time_ns()}"
    assert (
        httpx.post(
            f"{first}/v1/keel/teams", json={"name": team, "limits": {"rpm": LIMIT}}, headers=admin
        ).status_code
        == 201
    )
    assert (
        httpx.post(
            f"{first}/v1/keel/users",
            json={"name": f"svc-{team}", "kind": "service_account", "team": team},
            headers=admin,
        ).status_code
        == 201
    )
    created = httpx.post(
        f"{first}/v1/keel/keys", json={"user": f"svc-{team}", "name": "load"}, headers=admin
    )
    assert created.status_code == 201
    key = {"authorization": f"Bearer {created.json()['secret']}"}
    # The second replica learns about the key from the database (told to reload by Redis, or
    # by its poll), never from the first replica's memory.
    deadline = time.monotonic() + 10
    while httpx.get(f"{second}/v1/keel/whoami", headers=key).status_code != 200:
        assert time.monotonic() < deadline, "the second replica never saw the new key"
        time.sleep(0.1)

    _wait_outside_minute_edge()
    chat = {"model": "fake-model", "messages": [{"role": "user", "content": "hello"}]}

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            calls = [
                client.post(f"{replicas[n % 2]}/v1/chat/completions", json=chat, headers=key)
                for n in range(REQUESTS)
            ]
            return [response.status_code for response in await asyncio.gather(*calls)]

    statuses = asyncio.run(burst())
    assert statuses.count(200) == LIMIT
    assert statuses.count(429) == REQUESTS - LIMIT

    refused = httpx.post(f"{first}/v1/chat/completions", json=chat, headers=key)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert f"team {team}: requests per minute" in refused.json()["error"]["message"]

    usage = httpx.get(f"{second}/v1/keel/usage", headers=key).json()["data"]
    team_rpm = [row for row in usage if row["scope"] == f"team:{team}"]
    assert team_rpm[0]["used"] == LIMIT and team_rpm[0]["remaining"] == 0

    engine = create_engine(postgres_url)
    deadline = time.monotonic() + 10
    while True:
        with engine.connect() as connection:
            counts = dict(
                connection.execute(
                    text(
                        "SELECT status_code, count(*) FROM request_records "
                        "WHERE team = :team GROUP BY status_code"
                    ),
                    {"team": team},
                ).all()
            )
        if sum(counts.values()) >= REQUESTS + 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    engine.dispose()
    assert counts == {200: LIMIT, 429: REQUESTS - LIMIT + 1}

    # The peer address is what an allow-list sees: a forwarded-for header changes nothing.
    fenced = httpx.post(
        f"{first}/v1/keel/keys",
        json={"user": f"svc-{team}", "name": "fenced", "ip_allowlist": ["10.9.9.9/32"]},
        headers=admin,
    ).json()["secret"]
    spoofed = httpx.get(
        f"{first}/v1/keel/whoami",
        headers={"authorization": f"Bearer {fenced}", "x-forwarded-for": "10.9.9.9"},
    )
    assert spoofed.status_code == 403
    assert spoofed.json()["error"]["code"] == "ip_not_allowed"


TRIES = 5
CAP_S = 10.0


def _until(
    client: httpx.Client, url: str, headers: dict[str, str], wanted: int, meanwhile: int
) -> tuple[int, httpx.Response]:
    """Call `url` until it answers `wanted`; every answer before must be `meanwhile`. Returns
    how many of those there were, and the first `wanted` answer."""
    deadline = time.monotonic() + CAP_S
    before = 0
    while True:
        response = client.get(url, headers=headers)
        if response.status_code == wanted:
            return before, response
        assert response.status_code == meanwhile, response.text
        assert time.monotonic() < deadline, f"still {meanwhile} after {CAP_S} s"
        before += 1


def test_key_changes_reach_the_other_replica_without_waiting_for_a_poll(
    replicas_that_never_poll: list[str], record_property: Callable[[str, object], None]
) -> None:
    first, second = replicas_that_never_poll
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    user = f"svc-{os.getpid()}-{time.time_ns()}"
    created_after_s: list[float] = []
    revoked_after_s: list[float] = []
    admitted_after_revoke: list[int] = []
    with httpx.Client(timeout=30) as client:
        made = client.post(
            f"{first}/v1/keel/users", json={"name": user, "kind": "service_account"}, headers=admin
        )
        assert made.status_code == 201
        for attempt in range(TRIES):
            created = client.post(
                f"{first}/v1/keel/keys",
                json={"user": user, "name": f"try-{attempt}"},
                headers=admin,
            )
            assert created.status_code == 201
            answered = time.monotonic()
            key = {"authorization": f"Bearer {created.json()['secret']}"}
            _, accepted = _until(client, f"{second}/v1/keel/whoami", key, 200, meanwhile=401)
            created_after_s.append(time.monotonic() - answered)
            assert accepted.json()["name"] == user

            revoked = client.post(
                f"{first}/v1/keel/keys/{created.json()['id']}/revoke", headers=admin
            )
            assert revoked.status_code == 200
            answered = time.monotonic()
            admitted, refused = _until(client, f"{second}/v1/keel/whoami", key, 401, meanwhile=200)
            revoked_after_s.append(time.monotonic() - answered)
            admitted_after_revoke.append(admitted)
            assert refused.json()["error"]["code"] == "invalid_api_key"

        # Disabling the owner reaches the other replica the same way.
        created = client.post(
            f"{first}/v1/keel/keys", json={"user": user, "name": "last"}, headers=admin
        )
        key = {"authorization": f"Bearer {created.json()['secret']}"}
        _until(client, f"{second}/v1/keel/whoami", key, 200, meanwhile=401)
        disabled = client.patch(
            f"{first}/v1/keel/users/{user}", json={"disabled": True}, headers=admin
        )
        assert disabled.status_code == 200
        _until(client, f"{second}/v1/keel/whoami", key, 401, meanwhile=200)

    bound = {
        "revoked_to_refused_median_ms": round(statistics.median(revoked_after_s) * 1000, 1),
        "revoked_to_refused_ms": [round(s * 1000, 1) for s in revoked_after_s],
        "admitted_after_revoke": admitted_after_revoke,
        "created_to_accepted_median_ms": round(statistics.median(created_after_s) * 1000, 1),
    }
    record_property("key_propagation", bound)
    print(f"key propagation between replicas through Redis: {bound}")
