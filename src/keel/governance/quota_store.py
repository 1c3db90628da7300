"""Where quota counters live: in this process, or in Redis shared by every replica.

A counter is an integer under a key that names its scope, metric, window and bucket (the
caller builds the key; the store only prefixes it). Amounts are integers in every metric:
requests, tokens, and micro-dollars for spend, so comparisons at a limit are exact.

Both stores give the same guarantee: `reserve` checks every charge against its limit and, only
when all fit, adds every amount, with nothing able to run in between. The memory store gets that
from having no `await` between check and increment; the Redis store from doing both in one Lua
script, which Redis runs without interleaving other commands.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

__all__ = [
    "Adjustment",
    "Charge",
    "CounterStore",
    "CounterStoreUnavailableError",
    "MemoryCounterStore",
    "RedisCounterStore",
]

# Counters outlive their window by this much: a settle that lands just after the window ended
# still finds the counter, and replicas whose clocks disagree slightly still share it.
EXPIRY_GRACE_S = 60.0
_SWEEP_INTERVAL_S = 60.0


@dataclass(frozen=True, slots=True)
class Charge:
    """Add `amount` to counter `key` if the sum stays within `limit`. The counter is kept
    until a grace period past `window_end`."""

    key: str
    amount: int
    limit: int
    window_end: float  # seconds since the epoch, on the caller's clock


@dataclass(frozen=True, slots=True)
class Adjustment:
    """Add `delta` (possibly negative) to counter `key`, never taking it below 0."""

    key: str
    delta: int
    window_end: float


class CounterStoreUnavailableError(Exception):
    """The store could not be reached or did not answer in time."""


class CounterStore(Protocol):
    async def reserve(self, charges: Sequence[Charge], now: float) -> int | None:
        """Apply every charge, or none. Returns None when all were applied, else the index of
        the first charge that would go over its limit (a counter already at its limit refuses
        even an amount of 0)."""
        ...

    async def adjust(self, adjustments: Sequence[Adjustment], now: float) -> None: ...

    async def read(self, keys: Sequence[str], now: float) -> list[int]:
        """Current values; 0 for counters that do not exist (or have expired)."""
        ...

    async def aclose(self) -> None: ...


def _refuses(used: int, charge: Charge) -> bool:
    return used >= charge.limit or used + charge.amount > charge.limit


class MemoryCounterStore:
    """Counters in a dict, for a single replica and for tests. Touched only from the event loop,
    and no method awaits between reading and writing, so no lock is needed."""

    def __init__(self) -> None:
        self._counters: dict[str, tuple[int, float]] = {}  # key -> (value, expires_at)
        self._next_sweep = 0.0

    def __len__(self) -> int:
        return len(self._counters)

    def _value(self, key: str, now: float) -> int:
        entry = self._counters.get(key)
        if entry is None:
            return 0
        if entry[1] <= now:
            del self._counters[key]
            return 0
        return entry[0]

    def _sweep(self, now: float) -> None:
        # Windows of keys that are never touched again would otherwise stay forever.
        if now >= self._next_sweep:
            self._next_sweep = now + _SWEEP_INTERVAL_S
            expired = [key for key, (_, expires_at) in self._counters.items() if expires_at <= now]
            for key in expired:
                del self._counters[key]

    async def reserve(self, charges: Sequence[Charge], now: float) -> int | None:
        self._sweep(now)
        values = [self._value(charge.key, now) for charge in charges]
        for index, (used, charge) in enumerate(zip(values, charges, strict=True)):
            if _refuses(used, charge):
                return index
        for used, charge in zip(values, charges, strict=True):
            self._counters[charge.key] = (used + charge.amount, charge.window_end + EXPIRY_GRACE_S)
        return None

    async def adjust(self, adjustments: Sequence[Adjustment], now: float) -> None:
        for adjustment in adjustments:
            entry = self._counters.get(adjustment.key)
            if entry is not None and entry[1] > now:
                self._counters[adjustment.key] = (max(0, entry[0] + adjustment.delta), entry[1])
            elif adjustment.delta > 0:
                expires_at = adjustment.window_end + EXPIRY_GRACE_S
                self._counters[adjustment.key] = (adjustment.delta, expires_at)

    async def read(self, keys: Sequence[str], now: float) -> list[int]:
        return [self._value(key, now) for key in keys]

    async def aclose(self) -> None:
        self._counters.clear()


# KEYS: the counters. ARGV: limit, amount, ttl_s for each key, in that order. Returns 0 when
# every amount was added, else the 1-based index of the first counter that refused. Amounts are
# passed on to INCRBY as the strings they arrived as: a Lua number handed to redis.call is
# formatted with 14 significant digits, which would corrupt large counters.
_RESERVE_LUA = """
local values = redis.call('MGET', unpack(KEYS))
for i = 1, #KEYS do
  local used = tonumber(values[i]) or 0
  local limit = tonumber(ARGV[3 * i - 2])
  if used >= limit or used + tonumber(ARGV[3 * i - 1]) > limit then
    return i
  end
end
for i = 1, #KEYS do
  local amount = ARGV[3 * i - 1]
  if amount ~= '0' then
    if redis.call('INCRBY', KEYS[i], amount) == tonumber(amount) then
      redis.call('EXPIRE', KEYS[i], ARGV[3 * i])
    end
  end
end
return 0
"""

# KEYS: the counters. ARGV: delta, ttl_s for each key. A counter that no longer exists (its
# window is long gone) is only created for a positive delta; none goes below 0.
_ADJUST_LUA = """
for i = 1, #KEYS do
  local delta = ARGV[2 * i - 1]
  if redis.call('EXISTS', KEYS[i]) == 1 then
    if redis.call('INCRBY', KEYS[i], delta) < 0 then
      redis.call('SET', KEYS[i], '0', 'KEEPTTL')
    end
  elseif tonumber(delta) > 0 then
    redis.call('SET', KEYS[i], delta, 'EX', ARGV[2 * i])
  end
end
return 0
"""

_UNAVAILABLE = (redis.RedisError, OSError, TimeoutError)


def _ttl_s(window_end: float, now: float) -> str:
    return str(max(1, math.ceil(window_end + EXPIRY_GRACE_S - now)))


class RedisCounterStore:
    """Counters in Redis, shared by every replica: one EVALSHA per reserve and per adjust.

    A Redis that is down must not cost each request a timeout: after a failure the store
    refuses at once (raising CounterStoreUnavailableError without touching the network) for
    `circuit_s`; then one call probes Redis while the others keep being refused, and its
    success closes the circuit.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "keel:quota:",
        timeout_s: float = 0.5,
        connect_timeout_s: float = 2.0,
        circuit_s: float = 1.0,
        max_connections: int = 64,
    ) -> None:
        self.prefix = prefix
        self._circuit_s = circuit_s
        self._retry_at = 0.0  # time.monotonic() before which Redis is not tried
        # Short timeouts and no retries inside the client: the circuit is the retry policy. A
        # burst beyond `max_connections` waits (up to the timeout) for a free connection; the
        # client's default pool would fail it at once, and the quota would fail open.
        self._pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            # Opening connections and waiting for a free one get longer: a burst that opens
            # the whole pool at once on a busy machine is slow, not down. Once connected, an
            # answer slower than `timeout_s` is a failure.
            timeout=connect_timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=connect_timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
        )
        self.client: redis.Redis = redis.Redis(connection_pool=self._pool)
        self._reserve = self.client.register_script(_RESERVE_LUA)
        self._adjust = self.client.register_script(_ADJUST_LUA)
        self._closed = False

    def _enter(self) -> None:
        now = time.monotonic()
        if now < self._retry_at:
            raise CounterStoreUnavailableError("quota store circuit open after a recent failure")
        if self._retry_at:
            # This call is the probe: the others keep skipping Redis until it has an answer.
            self._retry_at = now + self._circuit_s

    def _failed(self, exc: BaseException) -> CounterStoreUnavailableError:
        self._retry_at = time.monotonic() + self._circuit_s
        return CounterStoreUnavailableError(f"{type(exc).__name__}: {exc}")

    async def _run(self, script: Any, keys: list[str], args: list[str]) -> Any:
        self._enter()
        try:
            result = await script(keys=keys, args=args)
        except _UNAVAILABLE as exc:
            raise self._failed(exc) from exc
        self._retry_at = 0.0
        return result

    async def reserve(self, charges: Sequence[Charge], now: float) -> int | None:
        keys: list[str] = []
        args: list[str] = []
        for charge in charges:
            keys.append(self.prefix + charge.key)
            args += (str(charge.limit), str(charge.amount), _ttl_s(charge.window_end, now))
        refused = int(await self._run(self._reserve, keys, args))
        return None if refused == 0 else refused - 1

    async def adjust(self, adjustments: Sequence[Adjustment], now: float) -> None:
        keys: list[str] = []
        args: list[str] = []
        for adjustment in adjustments:
            keys.append(self.prefix + adjustment.key)
            args += (str(adjustment.delta), _ttl_s(adjustment.window_end, now))
        if keys:
            await self._run(self._adjust, keys, args)

    async def read(self, keys: Sequence[str], now: float) -> list[int]:
        if not keys:
            return []
        self._enter()
        try:
            values = await self.client.mget([self.prefix + key for key in keys])
        except _UNAVAILABLE as exc:
            raise self._failed(exc) from exc
        self._retry_at = 0.0
        return [0 if value is None else int(value) for value in values]

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self.client.aclose()
            await self._pool.disconnect()  # a pool passed in is not closed by the client
