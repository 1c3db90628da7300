"""The first tier: an in-process LRU of serialized responses with absolute expiry.

Entries are kept as JSON bytes rather than dicts: the gateway mutates the dicts it sends (it
drops a usage chunk the client did not ask for), and a hit must hand out a fresh copy anyway.
"""

from __future__ import annotations

from collections import OrderedDict

from keel.cache.tier import Clock

__all__ = ["MemoryTier"]


class MemoryTier:
    def __init__(self, max_entries: int, clock: Clock) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        payload, expires_at = entry
        if expires_at <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return payload

    def put(self, key: str, payload: bytes, expires_at: float) -> None:
        self._entries[key] = (payload, expires_at)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            # Expired entries are not swept separately: they sink to the cold end like any
            # entry nobody reads, and go first.
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
