"""The second tier's contract, and the background writer both caches use to reach it.

A second tier holds two things: exact entries (a key to a serialized response with an absolute
expiry) and, per semantic scope, an append-only log of vectors that replicas read incrementally
from a cursor of their own. Tiers never raise into the request path: the caches catch, log (at
most once a minute) and carry on as if the tier had missed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Clock", "SecondTier", "StoredVector", "WriteBehind", "warn_tier_failure"]

log = logging.getLogger("keel.cache")

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class StoredVector:
    entry_id: str
    context: int
    vector: bytes  # little-endian float32, already normalized
    response: bytes  # the completion as JSON
    expires_at: float  # seconds since the epoch
    # The text that was embedded, for the precision guard ("" from a writer that predates it:
    # such an entry is served only with the guard off).
    prompt: str = ""


class SecondTier(Protocol):
    name: str

    async def get(self, key: str) -> tuple[bytes, float] | None:
        """The payload and absolute expiry stored under `key`, or None."""
        ...

    async def put(self, key: str, payload: bytes, expires_at: float, ttl_s: float) -> None: ...

    async def append_vector(self, scope: str, record: StoredVector, ttl_s: float) -> None: ...

    async def read_vectors(
        self, scope: str, cursor: str | None, now: float
    ) -> tuple[list[StoredVector], str | None]:
        """Unexpired records appended to `scope` after `cursor` (None: from the start), and the
        cursor to pass next time."""
        ...

    async def close(self) -> None:
        """Release connections. Safe to call more than once."""
        ...


_last_warning: dict[str, float] = {}


def warn_tier_failure(tier: str, action: str, exc: BaseException) -> None:
    # A tier (or the embedding model) that is down fails on every request; one line a minute
    # per tier says so without flooding the log.
    now = time.monotonic()
    if now - _last_warning.get(tier, -3600.0) >= 60.0:
        _last_warning[tier] = now
        log.warning("cache tier %s: %s failed (%s: %s)", tier, action, type(exc).__name__, exc)


class WriteBehind:
    """Second-tier writes as background tasks, so a response never waits for its own caching.

    At most `max_pending` writes are in flight; beyond that new writes are dropped (a slow tier
    must not turn into unbounded memory), and counted in `dropped`.
    """

    def __init__(self, tier: str, max_pending: int = 1000) -> None:
        self._tier = tier
        self._max_pending = max_pending
        self._tasks: set[asyncio.Task[None]] = set()
        self.dropped = 0

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def submit(self, action: str, write: Callable[[], Awaitable[None]]) -> None:
        if len(self._tasks) >= self._max_pending:
            self.dropped += 1
            return
        task = asyncio.get_running_loop().create_task(self._guarded(action, write))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, action: str, write: Callable[[], Awaitable[None]]) -> None:
        try:
            await write()
        except Exception as exc:
            warn_tier_failure(self._tier, action, exc)

    async def flush(self) -> None:
        """Wait for every write submitted so far."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks))
