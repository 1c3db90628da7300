"""Directory versions announced through Redis pub/sub (the two-replica test drives the whole
path through `keel serve`; these pin the feed's own behaviour against a real Redis)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import redis.asyncio as redis

from keel.governance.propagation import ChangeFeed, change_channel
from tests.conftest import remote_settings, running_app

REDIS_URL = "redis://127.0.0.1:6379/0"
DEAD_REDIS_URL = "redis://127.0.0.1:1/0"
CAP_S = 10.0


class Heard:
    """A listener that writes down what the feed hands it."""

    def __init__(self) -> None:
        self.calls: list[int | None] = []

    async def __call__(self, version: int | None) -> None:
        self.calls.append(version)


async def eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + CAP_S
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.01)


@pytest.fixture
async def feeds() -> AsyncIterator[Callable[..., Awaitable[tuple[ChangeFeed, Heard]]]]:
    started: list[ChangeFeed] = []

    async def start(url: str, channel: str, **options: float | str) -> tuple[ChangeFeed, Heard]:
        feed = ChangeFeed(url, channel=channel, **options)  # type: ignore[arg-type]
        heard = Heard()
        await feed.start(heard)
        started.append(feed)
        return feed, heard

    yield start
    for feed in started:
        await feed.aclose()


async def test_an_announced_version_reaches_every_subscriber_on_its_channel(
    feeds: Callable[..., Awaitable[tuple[ChangeFeed, Heard]]], redis_prefix: str
) -> None:
    channel = change_channel(redis_prefix)
    assert channel == f"{redis_prefix}governance:version"
    writer, heard_by_writer = await feeds(REDIS_URL, channel)
    reader, heard_by_reader = await feeds(REDIS_URL, channel)
    elsewhere, heard_elsewhere = await feeds(REDIS_URL, change_channel(redis_prefix + "other:"))
    for feed in (writer, reader, elsewhere):
        await eventually(lambda feed=feed: feed.subscribed, "a feed never subscribed")
    # Subscribing asks the listener to check the version row once: messages sent before are gone.
    await eventually(lambda: heard_by_reader.calls == [None], "no check after subscribing")

    # Directory writes commit in worker threads: announce from one.
    await asyncio.to_thread(writer.announce, 7)
    await eventually(lambda: 7 in heard_by_reader.calls, "the other subscriber never heard 7")
    assert heard_by_reader.calls == [None, 7]
    await eventually(lambda: 7 in heard_by_writer.calls, "the writer's own subscription")

    # Announced after 7 was delivered: had the other prefix's feed been on this channel, 7
    # would have reached it first.
    elsewhere.announce(3)
    await eventually(lambda: 3 in heard_elsewhere.calls, "the other channel never heard 3")
    assert heard_elsewhere.calls == [None, 3]


async def test_only_version_numbers_are_handed_on(
    feeds: Callable[..., Awaitable[tuple[ChangeFeed, Heard]]], redis_prefix: str
) -> None:
    channel = change_channel(redis_prefix)
    _, heard = await feeds(REDIS_URL, channel)
    await eventually(lambda: heard.calls == [None], "never subscribed")
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for payload in ("not-a-version", "-4", "9" * 40, "", "12"):
            await client.publish(channel, payload)
    finally:
        await client.aclose()
    await eventually(lambda: 12 in heard.calls, "the valid message never arrived")
    assert heard.calls == [None, 12]


async def test_an_older_announcement_is_not_published_after_a_newer_one(
    feeds: Callable[..., Awaitable[tuple[ChangeFeed, Heard]]], redis_prefix: str
) -> None:
    channel = change_channel(redis_prefix)
    writer, _ = await feeds(REDIS_URL, channel)
    _, heard = await feeds(REDIS_URL, channel)
    await eventually(lambda: writer.subscribed and heard.calls == [None], "never subscribed")
    writer.announce(9)
    writer.announce(5)  # two writes committed out of order: only the newest matters
    writer.announce(10)
    await eventually(lambda: 10 in heard.calls, "10 never arrived")
    assert 5 not in heard.calls
    assert [version for version in heard.calls if version is not None] in ([9, 10], [10])


async def test_a_redis_that_is_down_costs_nothing_and_is_logged_once(
    feeds: Callable[..., Awaitable[tuple[ChangeFeed, Heard]]],
    redis_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="keel.governance")
    feed, heard = await feeds(
        DEAD_REDIS_URL, change_channel(redis_prefix), min_backoff_s=0.01, max_backoff_s=0.02
    )
    for version in (1, 2, 3):
        await asyncio.to_thread(feed.announce, version)
        await eventually(
            lambda version=version: (
                sum("announc" in r.getMessage() for r in caplog.records) == version
            ),
            "an announcement was not tried",
        )
    await eventually(
        lambda: sum("subscribing" in r.getMessage() for r in caplog.records) >= 3,
        "the subscriber stopped retrying",
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert sum("not subscribed to key and policy changes" in m for m in warnings) == 1
    assert sum("could not announce" in m for m in warnings) == 1
    assert not feed.subscribed
    assert heard.calls == []


async def test_a_dropped_subscription_comes_back_and_checks_for_missed_changes(
    feeds: Callable[..., Awaitable[tuple[ChangeFeed, Heard]]],
    redis_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="keel.governance")
    channel = change_channel(redis_prefix)
    name = f"keel-test-{uuid.uuid4().hex[:12]}"
    feed, heard = await feeds(REDIS_URL, channel, client_name=name, min_backoff_s=0.05)
    await eventually(lambda: heard.calls == [None], "never subscribed")

    client = redis.Redis.from_url(REDIS_URL)
    try:
        connections = [c for c in await client.client_list() if c.get("name") == name]
        assert connections
        for connection in connections:
            await client.client_kill_filter(_id=connection["id"])
        await eventually(lambda: heard.calls == [None, None], "never subscribed again")
        await eventually(lambda: feed.subscribed, "not subscribed")
        await client.publish(channel, "21")
    finally:
        await client.aclose()
    await eventually(lambda: 21 in heard.calls, "nothing arrives after resubscribing")
    messages = [r.getMessage() for r in caplog.records]
    assert sum("not subscribed to key and policy changes" in m for m in messages) == 1
    assert sum("subscribed to key and policy changes in Redis again" in m for m in messages) == 1


async def test_replicas_fall_back_to_polling_when_redis_is_down(
    tmp_path: Path, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="keel.governance")
    admin_key = "propagation-admin-key-0123456789"
    settings = remote_settings(
        tmp_path,
        [],
        database_url=postgres_url,
        redis_url=DEAD_REDIS_URL,
        quotas={"enabled": False},
        auth={"admin_key": admin_key, "refresh_interval_s": 0.1},
    )
    admin = {"authorization": f"Bearer {admin_key}"}
    async with running_app(settings) as (_, first), running_app(settings) as (_, second):
        assert (
            await first.post("/v1/keel/users", json={"name": "carol"}, headers=admin)
        ).status_code == 201
        created = await first.post("/v1/keel/keys", json={"user": "carol"}, headers=admin)
        assert created.status_code == 201
        carol = {"authorization": f"Bearer {created.json()['secret']}"}
        assert (await first.get("/v1/keel/whoami", headers=carol)).status_code == 200
        await _answers(second, carol, 200)
        revoked = await first.post(f"/v1/keel/keys/{created.json()['id']}/revoke", headers=admin)
        assert revoked.status_code == 200
        assert (await first.get("/v1/keel/whoami", headers=carol)).status_code == 401
        await _answers(second, carol, 401)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    # Once per replica however often it retries; only the first replica wrote anything (the
    # default organization, then carol and her key).
    assert sum("not subscribed to key and policy changes" in m for m in warnings) == 2
    assert sum("could not announce" in m for m in warnings) == 1


async def _answers(client: httpx.AsyncClient, headers: dict[str, str], status: int) -> None:
    deadline = asyncio.get_running_loop().time() + CAP_S
    while (await client.get("/v1/keel/whoami", headers=headers)).status_code != status:
        assert asyncio.get_running_loop().time() < deadline, f"never answered {status}"
        await asyncio.sleep(0.05)
