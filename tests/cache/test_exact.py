"""The exact cache: memory tier, expiry, eviction, and the SQLite and Redis second tiers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from keel.cache import ResponseCache, build_cache, cache_key
from keel.cache.redis_tier import RedisTier
from keel.cache.sqlite_tier import SQLiteTier
from keel.cache.tier import StoredVector
from tests.cache.helpers import REDIS_URL, FakeClock, chat, completion


class SpyTier:
    """A second tier in memory that counts its calls, and can be made to fail."""

    name = "spy"

    def __init__(self) -> None:
        self.entries: dict[str, tuple[bytes, float]] = {}
        self.gets = 0
        self.puts = 0
        self.failing = False

    async def get(self, key: str) -> tuple[bytes, float] | None:
        self.gets += 1
        if self.failing:
            raise ConnectionError("tier down")
        return self.entries.get(key)

    async def put(self, key: str, payload: bytes, expires_at: float, ttl_s: float) -> None:
        self.puts += 1
        if self.failing:
            raise ConnectionError("tier down")
        self.entries[key] = (payload, expires_at)

    async def append_vector(self, scope: str, record: StoredVector, ttl_s: float) -> None:
        raise NotImplementedError

    async def read_vectors(
        self, scope: str, cursor: str | None, now: float
    ) -> tuple[list[StoredVector], str | None]:
        return [], cursor

    async def close(self) -> None:
        return None


KEY = cache_key("gpt-4o-mini", chat(temperature=0))


async def test_a_hit_returns_a_copy_the_caller_may_change(clock: FakeClock) -> None:
    cache = ResponseCache(clock=clock)
    assert await cache.get(KEY) is None
    assert await cache.set(KEY, completion("Paris."))
    hit = await cache.get(KEY)
    assert hit == completion("Paris.")
    assert hit is not None
    del hit["usage"]
    assert await cache.get(KEY) == completion("Paris.")
    assert (cache.stats.memory_hits, cache.stats.misses, cache.stats.stores) == (2, 1, 1)


async def test_entries_expire_after_their_ttl(clock: FakeClock) -> None:
    cache = ResponseCache(default_ttl_s=60, clock=clock)
    await cache.set(KEY, completion())
    await cache.set("short", completion(), ttl_s=5)
    clock.advance(5)
    assert await cache.get("short") is None
    assert await cache.get(KEY) is not None
    clock.advance(55)
    assert await cache.get(KEY) is None


async def test_least_recently_used_entries_are_evicted(clock: FakeClock) -> None:
    cache = ResponseCache(max_entries=2, clock=clock)
    await cache.set("a", completion("A"))
    await cache.set("b", completion("B"))
    await cache.get("a")
    await cache.set("c", completion("C"))
    assert await cache.get("b") is None
    assert await cache.get("a") is not None
    assert await cache.get("c") is not None
    assert len(cache) == 2


async def test_unfinished_completions_are_not_stored(clock: FakeClock) -> None:
    cache = ResponseCache(clock=clock)
    unfinished = completion()
    unfinished["choices"][0]["finish_reason"] = None
    assert not await cache.set(KEY, unfinished)
    assert not await cache.set(KEY, {"choices": []})
    assert await cache.get(KEY) is None
    assert cache.stats.refused == 2


async def test_a_memory_hit_does_not_touch_the_second_tier(clock: FakeClock) -> None:
    tier = SpyTier()
    cache = ResponseCache(second_tier=tier, clock=clock)
    await cache.set(KEY, completion())
    await cache.flush()
    for _ in range(5):
        assert await cache.get(KEY) is not None
    assert (tier.gets, tier.puts) == (0, 1)


async def test_a_second_tier_hit_is_promoted_to_memory(clock: FakeClock) -> None:
    tier = SpyTier()
    writer = ResponseCache(second_tier=tier, clock=clock)
    await writer.set(KEY, completion())
    await writer.flush()
    reader = ResponseCache(second_tier=tier, clock=clock)
    assert await reader.get(KEY) == completion()
    assert await reader.get(KEY) == completion()
    assert tier.gets == 1
    assert reader.stats.second_tier_hits == 1 and reader.stats.memory_hits == 1


async def test_a_failing_second_tier_is_a_miss_not_an_error(clock: FakeClock) -> None:
    tier = SpyTier()
    tier.failing = True
    cache = ResponseCache(second_tier=tier, clock=clock)
    await cache.set(KEY, completion())
    await cache.flush()
    assert await cache.get(KEY) is not None
    assert await cache.get("elsewhere") is None


async def test_sqlite_tier_persists_across_instances(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "cache.sqlite3"
    first = build_cache(sqlite_path=path, default_ttl_s=60, clock=clock)
    await first.exact.set(KEY, completion("Paris."))
    await first.exact.set("brief", completion("Soon gone."), ttl_s=1)
    await first.close()

    second = build_cache(sqlite_path=path, clock=clock)
    assert await second.exact.get(KEY) == completion("Paris.")
    assert second.exact.stats.second_tier_hits == 1
    clock.advance(1)
    assert await second.exact.get("brief") is None
    await second.close()


async def test_sqlite_tier_prunes_expired_and_excess_rows(tmp_path: Path, clock: FakeClock) -> None:
    tier = SQLiteTier(tmp_path / "cache.sqlite3", max_entries=3, prune_every=5, clock=clock)
    for index in range(4):
        await tier.put(f"old-{index}", b"{}", clock() + 1, 1)
    clock.advance(2)
    await tier.put("new-0", b"{}", clock() + 60, 60)
    assert await tier.get("old-0") is None
    # Writes 6 to 10; the tenth prunes down to the three that expire last.
    for index in range(1, 6):
        await tier.put(f"new-{index}", b"{}", clock() + 60 + index, 60)
    kept = [await tier.get(f"new-{index}") is not None for index in range(6)]
    assert kept == [False, False, False, True, True, True]
    await tier.close()
    await tier.close()


async def test_redis_tier_is_shared_by_replicas(redis_prefix: str, clock: FakeClock) -> None:
    replica_a = build_cache(redis_url=REDIS_URL, redis_prefix=redis_prefix, clock=clock)
    replica_b = build_cache(redis_url=REDIS_URL, redis_prefix=redis_prefix, clock=clock)
    try:
        assert await replica_b.exact.get(KEY) is None
        await replica_a.exact.set(KEY, completion("Paris."), ttl_s=30)
        await replica_a.flush()
        assert await replica_b.exact.get(KEY) == completion("Paris.")
        assert replica_b.exact.stats.second_tier_hits == 1
        tier = replica_b.second_tier
        assert isinstance(tier, RedisTier)
        ttl_ms = await tier.client.pttl(f"{redis_prefix}x:{KEY}")
        assert 0 < ttl_ms <= 30_000
    finally:
        await replica_a.close()
        await replica_b.close()


async def test_redis_entries_past_their_expiry_are_not_served(
    redis_prefix: str, clock: FakeClock
) -> None:
    writer = build_cache(redis_url=REDIS_URL, redis_prefix=redis_prefix, clock=clock)
    reader = build_cache(redis_url=REDIS_URL, redis_prefix=redis_prefix, clock=clock)
    try:
        await writer.exact.set(KEY, completion(), ttl_s=10)
        await writer.flush()
        clock.advance(10)
        assert await reader.exact.get(KEY) is None
    finally:
        await writer.close()
        await reader.close()


async def test_redis_expires_entries_itself(redis_prefix: str) -> None:
    cache = build_cache(redis_url=REDIS_URL, redis_prefix=redis_prefix)
    other = build_cache(redis_url=REDIS_URL, redis_prefix=redis_prefix)
    try:
        await cache.exact.set(KEY, completion(), ttl_s=0.2)
        await cache.flush()
        await asyncio.sleep(0.3)
        assert await other.exact.get(KEY) is None
    finally:
        await cache.close()
        await other.close()


async def test_an_unreachable_redis_costs_a_miss(clock: FakeClock) -> None:
    cache = build_cache(redis_url="redis://127.0.0.1:1/0", clock=clock)
    await cache.exact.set(KEY, completion())
    await cache.flush()
    assert await cache.exact.get("not-in-memory") is None
    assert await cache.exact.get(KEY) is not None
    await cache.close()


@pytest.mark.parametrize("ttl", [0, -1])
async def test_a_non_positive_ttl_is_refused(clock: FakeClock, ttl: Any) -> None:
    with pytest.raises(ValueError):
        await ResponseCache(clock=clock).set(KEY, completion(), ttl_s=ttl)
