"""Assembling the caches from plain settings, so the gateway's wiring stays one call."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from keel.cache.exact import ResponseCache
from keel.cache.precision import GuardLevel, Verifier
from keel.cache.semantic import EmbedFn, SemanticCache
from keel.cache.tier import Clock, SecondTier

__all__ = ["Caches", "build_cache"]


@dataclass(slots=True)
class Caches:
    exact: ResponseCache
    semantic: SemanticCache | None
    second_tier: SecondTier | None

    async def flush(self) -> None:
        await self.exact.flush()
        if self.semantic is not None:
            await self.semantic.flush()

    async def close(self) -> None:
        """Flush both caches, then close the shared second tier once."""
        await self.flush()
        await self.exact.close()
        if self.semantic is not None:
            await self.semantic.close()


def build_cache(
    *,
    redis_url: str | None = None,
    sqlite_path: str | Path | None = None,
    max_entries: int = 10_000,
    default_ttl_s: float = 3600,
    redis_prefix: str = "keel:cache:",
    second_tier_max_entries: int = 100_000,
    embed: EmbedFn | None = None,
    semantic_threshold: float = 0.95,
    semantic_max_entries: int = 10_000,
    semantic_sync_interval_s: float = 1.0,
    semantic_guard: GuardLevel = "lexical",
    verifier: Verifier | None = None,
    verify_band: float = 0.03,
    clock: Clock = time.time,
) -> Caches:
    """The exact cache, and the semantic cache when `embed` is given (it is off otherwise).

    Second tier: Redis when `redis_url` is set (shared by replicas), else the SQLite file at
    `sqlite_path` (this replica only, survives restarts), else none. Nothing connects here:
    Redis connects on first use, SQLite opens its file on its worker thread.
    """
    tier: SecondTier | None = None
    if redis_url:
        from keel.cache.redis_tier import RedisTier

        tier = RedisTier(redis_url, prefix=redis_prefix, stream_max_entries=semantic_max_entries)
    elif sqlite_path is not None:
        from keel.cache.sqlite_tier import SQLiteTier

        tier = SQLiteTier(sqlite_path, max_entries=second_tier_max_entries, clock=clock)
    exact = ResponseCache(
        max_entries=max_entries, default_ttl_s=default_ttl_s, second_tier=tier, clock=clock
    )
    semantic = None
    if embed is not None:
        semantic = SemanticCache(
            embed,
            second_tier=tier,
            threshold=semantic_threshold,
            default_ttl_s=default_ttl_s,
            max_entries_per_scope=semantic_max_entries,
            sync_interval_s=semantic_sync_interval_s,
            clock=clock,
            guard=semantic_guard,
            verifier=verifier,
            verify_band=verify_band,
        )
    return Caches(exact=exact, semantic=semantic, second_tier=tier)
