"""The exact response cache: the memory tier in front of an optional second tier.

A memory hit touches nothing else. A memory miss asks the second tier, and a hit there is
copied into memory for the next time. A store goes to memory at once and to the second tier in
the background (`flush()` waits for those writes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from keel.cache.memory import MemoryTier
from keel.cache.tier import Clock, SecondTier, WriteBehind, warn_tier_failure

__all__ = ["CacheStats", "ResponseCache", "storable"]


@dataclass(slots=True)
class CacheStats:
    memory_hits: int = 0
    second_tier_hits: int = 0
    misses: int = 0
    stores: int = 0
    refused: int = 0  # completions not stored: cut short, or without choices


def storable(response: dict[str, Any]) -> bool:
    """A completion worth replaying: it has choices and every one of them finished."""
    choices = response.get("choices")
    if not choices:
        return False
    return all(choice.get("finish_reason") for choice in choices)


class ResponseCache:
    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        default_ttl_s: float = 3600,
        second_tier: SecondTier | None = None,
        clock: Clock = time.time,
        max_pending_writes: int = 1000,
    ) -> None:
        if default_ttl_s <= 0:
            raise ValueError("default_ttl_s must be positive")
        self.default_ttl_s = default_ttl_s
        self.second_tier = second_tier
        self.stats = CacheStats()
        self._clock = clock
        self._memory = MemoryTier(max_entries, clock)
        self._writes = WriteBehind(second_tier.name if second_tier else "none", max_pending_writes)

    def __len__(self) -> int:
        """Entries in the memory tier (expired ones included until they are read or evicted)."""
        return len(self._memory)

    async def get(self, key: str) -> dict[str, Any] | None:
        """The cached response for `key`, as a fresh dict the caller may change, or None."""
        payload = self._memory.get(key)
        if payload is not None:
            self.stats.memory_hits += 1
            return _loads(payload)
        if self.second_tier is not None:
            try:
                found = await self.second_tier.get(key)
            except Exception as exc:
                warn_tier_failure(self.second_tier.name, "read", exc)
                found = None
            if found is not None and found[1] > self._clock():
                payload, expires_at = found
                self._memory.put(key, payload, expires_at)
                self.stats.second_tier_hits += 1
                return _loads(payload)
        self.stats.misses += 1
        return None

    async def set(self, key: str, response: dict[str, Any], *, ttl_s: float | None = None) -> bool:
        """Store `response` under `key` for `ttl_s` seconds (the default TTL when None).
        Returns False, storing nothing, for a completion that did not finish."""
        if not storable(response):
            self.stats.refused += 1
            return False
        ttl = self.default_ttl_s if ttl_s is None else ttl_s
        if ttl <= 0:
            raise ValueError("ttl_s must be positive")
        expires_at = self._clock() + ttl
        payload = orjson.dumps(response)
        self._memory.put(key, payload, expires_at)
        self.stats.stores += 1
        tier = self.second_tier
        if tier is not None:
            self._writes.submit("write", lambda: tier.put(key, payload, expires_at, ttl))
        return True

    @property
    def dropped_writes(self) -> int:
        """Second-tier writes dropped because too many were already in flight."""
        return self._writes.dropped

    async def flush(self) -> None:
        """Wait until every store so far has reached the second tier (or failed)."""
        await self._writes.flush()

    async def close(self) -> None:
        """Flush, then close the second tier."""
        await self.flush()
        if self.second_tier is not None:
            await self.second_tier.close()


def _loads(payload: bytes) -> dict[str, Any]:
    value: dict[str, Any] = orjson.loads(payload)
    return value
