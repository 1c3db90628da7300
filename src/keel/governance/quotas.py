"""Quotas and budgets: request, token and spend limits per key, user, team and model.

Each limit counts in fixed UTC calendar windows (the current minute, UTC day or calendar month),
so "N per minute" admits exactly N in each minute, whichever replica serves them. A request
reserves its estimated cost against every limit that applies, all or nothing; when the call ends
`settle` replaces the estimate with what was used, in the window the reservation was made in.

Spend is counted in integer micro-dollars: budgets are compared exactly (ten charges of $0.10
reach a $1 budget, not $0.9999999), and Redis adds them with plain INCRBY. A micro-dollar is
finer than any single request is priced.
"""

from __future__ import annotations

import calendar
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from keel.errors import QuotaExceededError, QuotaUnavailableError
from keel.governance.config import LimitSet
from keel.governance.quota_store import (
    Adjustment,
    Charge,
    CounterStore,
    CounterStoreUnavailableError,
    MemoryCounterStore,
    RedisCounterStore,
)

__all__ = [
    "Bucket",
    "FailureMode",
    "Limit",
    "Metric",
    "Quotas",
    "Reservation",
    "Window",
    "build_quotas",
    "limits_from",
    "window_bounds",
]

log = logging.getLogger("keel.governance")

Metric = Literal["requests", "tokens", "usd"]
Window = Literal["minute", "day", "month"]
FailureMode = Literal["open", "closed"]

_MICROS_PER_USD = 1_000_000
_WARNING_INTERVAL_S = 60.0
_LIMIT_FIELDS: tuple[tuple[str, Metric, Window, str], ...] = (
    ("rpm", "requests", "minute", "requests per minute"),
    ("tpm", "tokens", "minute", "tokens per minute"),
    ("tokens_per_day", "tokens", "day", "tokens per day"),
    ("usd_per_day", "usd", "day", "USD per day"),
    ("usd_per_month", "usd", "month", "USD per month"),
)


@dataclass(frozen=True, slots=True)
class Limit:
    scope: str  # e.g. "key:key_ab12", "user:alice", "team:ml", "model:gpt-4o"
    metric: Metric
    window: Window
    limit: float
    label: str  # how the limit is named to the client, e.g. "team ml: tokens per day"


def limits_from(scope: str, owner_label: str, limits: LimitSet) -> list[Limit]:
    """The limits a LimitSet sets for `scope`; unset fields add none."""
    found = []
    for field_name, metric, window, phrase in _LIMIT_FIELDS:
        value = getattr(limits, field_name)
        if value is not None:
            found.append(Limit(scope, metric, window, float(value), f"{owner_label}: {phrase}"))
    return found


def window_bounds(window: Window, now: float) -> tuple[float, float, str]:
    """The UTC window holding `now`: its start, its end, and a name for its bucket."""
    if window == "minute":
        start = now - now % 60
        return start, start + 60, time.strftime("%Y-%m-%dT%H:%M", time.gmtime(start))
    if window == "day":
        start = now - now % 86_400
        return start, start + 86_400, time.strftime("%Y-%m-%d", time.gmtime(start))
    year, month = time.gmtime(now)[:2]
    next_year, next_month = (year + 1, 1) if month == 12 else (year, month + 1)
    start = calendar.timegm((year, month, 1, 0, 0, 0, 0, 0, 0))
    end = calendar.timegm((next_year, next_month, 1, 0, 0, 0, 0, 0, 0))
    return float(start), float(end), f"{year:04d}-{month:02d}"


@dataclass(frozen=True, slots=True)
class Bucket:
    """One counter a reservation charged: its key in the store, its metric, and when its
    window ends."""

    key: str
    metric: Metric
    window_end: float


@dataclass(slots=True, eq=False)
class Reservation:
    """What `reserve` charged, for `settle` or `release` to correct later.

    `enforced` is False when the store was unreachable and the failure mode let the request
    through uncounted; settling such a reservation still records the actual usage if the store
    is back by then.
    """

    buckets: tuple[Bucket, ...] = ()
    enforced: bool = True
    tokens: int = 0  # tokens currently charged to the token counters
    usd_micros: int = 0  # micro-dollars currently charged to the spend counters
    released: bool = False


# Returned for requests with no limits; settling it does nothing, so it can be shared.
_UNLIMITED = Reservation()


def _micros(usd: float) -> int:
    return max(0, round(usd * _MICROS_PER_USD))


def _capacity(limit: Limit) -> int:
    """The limit in the store's integer units."""
    if limit.metric == "usd":
        return round(limit.limit * _MICROS_PER_USD)
    return int(limit.limit)


def _format(limit: Limit, amount: float) -> str:
    if limit.metric == "usd":
        return "$" + f"{amount:,.6f}".rstrip("0").rstrip(".")
    return f"{int(amount):,}"


def _retry_after_s(window_end: float, now: float) -> int:
    return max(1, math.ceil(window_end - now))


class Quotas:
    def __init__(
        self,
        store: CounterStore,
        *,
        failure_mode: FailureMode = "open",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.failure_mode = failure_mode
        self._clock = clock
        # The current bucket of each window; recomputed only when the clock leaves it.
        self._windows: dict[Window, tuple[float, float, str]] = {}
        self._last_warning = -math.inf
        self._unwarned_failures = 0

    def _window(self, window: Window, now: float) -> tuple[float, float, str]:
        current = self._windows.get(window)
        if current is None or not current[0] <= now < current[1]:
            current = self._windows[window] = window_bounds(window, now)
        return current

    def _key(self, limit: Limit, now: float) -> tuple[str, float]:
        _, end, bucket = self._window(limit.window, now)
        return f"{limit.scope}:{limit.metric}:{limit.window}:{bucket}", end

    # -- the request path ------------------------------------------------------------------

    async def reserve(self, limits: Sequence[Limit], *, tokens: int, usd: float) -> Reservation:
        """Charge one request, `tokens` and `usd` (estimates) against every limit, or nothing.

        Raises QuotaExceededError naming the first limit that refused, and QuotaUnavailableError
        when the store is unreachable and the failure mode is "closed".
        """
        if not limits:
            return _UNLIMITED
        now = self._clock()
        tokens = max(0, tokens)
        micros = _micros(usd)
        charges: list[Charge] = []
        charged: list[Limit] = []
        positions: dict[str, int] = {}
        for limit in limits:
            key, window_end = self._key(limit, now)
            capacity = _capacity(limit)
            if limit.metric == "requests":
                amount = 1
            elif limit.metric == "tokens":
                amount = tokens
            else:
                amount = micros
            if capacity <= 0 or amount > capacity:
                # Refused whatever the counters hold: no need to ask the store.
                raise _exceeded(limit, window_end, now, amount if capacity > 0 else None)
            charge = Charge(key, amount, capacity, window_end)
            position = positions.get(key)
            if position is None:
                positions[key] = len(charges)
                charges.append(charge)
                charged.append(limit)
            elif capacity < charges[position].limit:
                # The same counter limited twice: it is charged once, against the tighter limit.
                charges[position] = charge
                charged[position] = limit
        buckets = tuple(
            Bucket(charge.key, limit.metric, charge.window_end)
            for charge, limit in zip(charges, charged, strict=True)
        )
        try:
            refused = await self.store.reserve(charges, now)
        except CounterStoreUnavailableError as exc:
            if self.failure_mode == "closed":
                self._warn(exc, "refusing requests (failure mode: closed)")
                raise QuotaUnavailableError(
                    "quota store unavailable; requests are refused until it is back",
                    headers={"Retry-After": "1"},
                ) from exc
            self._warn(exc, "admitting requests without quota checks (failure mode: open)")
            return Reservation(buckets, enforced=False)
        if refused is not None:
            raise _exceeded(charged[refused], charges[refused].window_end, now, None)
        return Reservation(buckets, tokens=tokens, usd_micros=micros)

    async def settle(self, reservation: Reservation, *, tokens: int, usd: float) -> None:
        """Replace the reservation's estimates with actual usage (0 and 0 refund them; the
        request itself stays counted). Never raises for a store failure, so it can run as a
        background task; the correction is then lost and logged."""
        if reservation.buckets and not reservation.released:
            await self._adjust(reservation, max(0, tokens), _micros(usd), requests=0)

    async def release(self, reservation: Reservation) -> None:
        """Give everything back, the request included: for a request refused before it reached
        a provider. Later settles and releases of the same reservation do nothing."""
        if reservation.buckets and not reservation.released:
            reservation.released = True
            # An unenforced reservation never counted its request, so it has none to give back.
            await self._adjust(reservation, 0, 0, requests=-1 if reservation.enforced else 0)

    async def _adjust(
        self, reservation: Reservation, tokens: int, micros: int, *, requests: int
    ) -> None:
        deltas = {
            "requests": requests,
            "tokens": tokens - reservation.tokens,
            "usd": micros - reservation.usd_micros,
        }
        adjustments = [
            Adjustment(bucket.key, deltas[bucket.metric], bucket.window_end)
            for bucket in reservation.buckets
            if deltas[bucket.metric]
        ]
        # Recorded before the await, so a second settle racing this one adjusts from here.
        reservation.tokens, reservation.usd_micros = tokens, micros
        if not adjustments:
            return
        try:
            await self.store.adjust(adjustments, self._clock())
        except CounterStoreUnavailableError as exc:
            self._warn(exc, "a usage correction was lost")

    # -- reporting -------------------------------------------------------------------------

    async def usage(self, limits: Sequence[Limit]) -> list[dict[str, Any]]:
        """The current window's counters for `limits`. Raises QuotaUnavailableError when the
        store cannot be read, whatever the failure mode."""
        now = self._clock()
        keys = [self._key(limit, now) for limit in limits]
        try:
            values = await self.store.read([key for key, _ in keys], now)
        except CounterStoreUnavailableError as exc:
            raise QuotaUnavailableError("quota store unavailable") from exc
        report = []
        for limit, (_, window_end), value in zip(limits, keys, values, strict=True):
            used: float = value / _MICROS_PER_USD if limit.metric == "usd" else value
            cap: float = limit.limit if limit.metric == "usd" else int(limit.limit)
            report.append(
                {
                    "scope": limit.scope,
                    "metric": limit.metric,
                    "window": limit.window,
                    "limit": cap,
                    "used": used,
                    "remaining": max(0, cap - used),
                    "resets_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(window_end)),
                }
            )
        return report

    async def aclose(self) -> None:
        await self.store.aclose()

    def _warn(self, exc: CounterStoreUnavailableError, consequence: str) -> None:
        # While the store is down every request fails the same way: one line a minute says so.
        # The message is the client library's (host and port, never credentials or keys).
        self._unwarned_failures += 1
        now = time.monotonic()
        if now - self._last_warning >= _WARNING_INTERVAL_S:
            log.warning(
                "quota store unavailable (%s); %s (%d failures since the last warning)",
                str(exc)[:200],
                consequence,
                self._unwarned_failures,
            )
            self._last_warning = now
            self._unwarned_failures = 0


def _exceeded(
    limit: Limit, window_end: float, now: float, too_large: int | None
) -> QuotaExceededError:
    retry_after = _retry_after_s(window_end, now)
    message = f"quota exceeded: {limit.label} (limit {_format(limit, limit.limit)})"
    if too_large is None:
        message += f"; retry in {retry_after} s"
    else:
        amount = too_large / _MICROS_PER_USD if limit.metric == "usd" else too_large
        message += f"; this request alone is estimated at {_format(limit, amount)}"
    return QuotaExceededError(message, headers={"Retry-After": str(retry_after)})


def build_quotas(
    redis_url: str | None,
    failure_mode: FailureMode = "open",
    *,
    redis_prefix: str = "keel:",
    clock: Callable[[], float] = time.time,
) -> Quotas:
    """Counters in Redis, shared by replicas, when a URL is given; else in this process."""
    store: CounterStore = (
        MemoryCounterStore()
        if redis_url is None
        else RedisCounterStore(redis_url, prefix=f"{redis_prefix}quota:")
    )
    return Quotas(store, failure_mode=failure_mode, clock=clock)
