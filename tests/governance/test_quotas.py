"""Quotas and budgets: admission at the limit, all-or-nothing, settling, windows, usage, and the
store failing. Redis tests use the real server, each under a key prefix of its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis.asyncio as redis

from keel.errors import QuotaExceededError, QuotaUnavailableError
from keel.governance.config import LimitSet
from keel.governance.quota_store import (
    Adjustment,
    CounterStore,
    MemoryCounterStore,
    RedisCounterStore,
)
from keel.governance.quotas import (
    FailureMode,
    Limit,
    Quotas,
    Reservation,
    build_quotas,
    limits_from,
    window_bounds,
)
from tests.conftest import REDIS_URL

DEAD_REDIS_URL = "redis://127.0.0.1:1/0"
START = 1_800_000_030.0  # 2027-01-15T08:00:30Z: 30 s into a minute


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def rpm(limit: float, scope: str = "key:k1", label: str = "key k1") -> Limit:
    return Limit(scope, "requests", "minute", limit, f"{label}: requests per minute")


def tpm(limit: float, scope: str = "team:ml", label: str = "team ml") -> Limit:
    return Limit(scope, "tokens", "minute", limit, f"{label}: tokens per minute")


def usd_per_day(limit: float, scope: str = "team:ml", label: str = "team ml") -> Limit:
    return Limit(scope, "usd", "day", limit, f"{label}: USD per day")


def used(report: list[dict[str, Any]]) -> list[Any]:
    return [entry["used"] for entry in report]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def prefix(redis_prefix: str) -> str:
    return redis_prefix + "quota:"


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[CounterStore]:
    store: CounterStore
    if request.param == "memory":
        store = MemoryCounterStore()
    else:
        store = RedisCounterStore(REDIS_URL, prefix=prefix)
    yield store
    await store.aclose()


@pytest.fixture
def quotas(store: CounterStore, clock: FakeClock) -> Quotas:
    return Quotas(store, clock=clock)


async def admitted(quotas: Quotas, limits: list[Limit], attempts: int, **cost: float) -> int:
    count = 0
    for _ in range(attempts):
        try:
            await quotas.reserve(limits, tokens=int(cost.get("tokens", 0)), usd=cost.get("usd", 0))
        except QuotaExceededError:
            continue
        count += 1
    return count


# -- the model ---------------------------------------------------------------------------------


def test_limits_from_maps_every_field() -> None:
    limits = limits_from(
        "team:ml",
        "team ml",
        LimitSet(rpm=10, tpm=1000, tokens_per_day=50_000, usd_per_day=5, usd_per_month=100),
    )
    assert [(limit.metric, limit.window, limit.limit) for limit in limits] == [
        ("requests", "minute", 10),
        ("tokens", "minute", 1000),
        ("tokens", "day", 50_000),
        ("usd", "day", 5),
        ("usd", "month", 100),
    ]
    assert {limit.scope for limit in limits} == {"team:ml"}
    assert limits[0].label == "team ml: requests per minute"
    assert limits[2].label == "team ml: tokens per day"
    assert limits_from("key:k1", "key k1", LimitSet()) == []


def test_windows_are_utc_calendar_windows() -> None:
    assert window_bounds("minute", START) == (START - 30, START + 30, "2027-01-15T08:00")
    day_start = datetime(2027, 1, 15, tzinfo=UTC).timestamp()
    assert window_bounds("day", START) == (day_start, day_start + 86_400, "2027-01-15")
    december = datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
    start, end, bucket = window_bounds("month", december)
    assert datetime.fromtimestamp(start, UTC) == datetime(2026, 12, 1, tzinfo=UTC)
    assert datetime.fromtimestamp(end, UTC) == datetime(2027, 1, 1, tzinfo=UTC)
    assert bucket == "2026-12"


# -- admission -----------------------------------------------------------------------------------


async def test_n_admitted_then_refused_with_429(quotas: Quotas) -> None:
    limits = [rpm(3)]
    assert await admitted(quotas, limits, 3) == 3
    with pytest.raises(QuotaExceededError) as refused:
        await quotas.reserve(limits, tokens=10, usd=0.01)
    error = refused.value
    assert error.status_code == 429
    assert error.code == "quota_exceeded"
    assert error.headers["Retry-After"] == "30"  # the minute started 30 s ago
    assert error.message == "quota exceeded: key k1: requests per minute (limit 3); retry in 30 s"


async def test_retry_after_is_at_least_one_second(quotas: Quotas, clock: FakeClock) -> None:
    clock.now = START + 29.9  # 0.1 s before the minute ends
    await quotas.reserve([rpm(1)], tokens=0, usd=0)
    with pytest.raises(QuotaExceededError) as refused:
        await quotas.reserve([rpm(1)], tokens=0, usd=0)
    assert refused.value.headers["Retry-After"] == "1"


async def test_a_refused_reservation_charges_nothing(quotas: Quotas) -> None:
    limits = [rpm(10), tpm(100), usd_per_day(5)]
    await quotas.reserve(limits, tokens=80, usd=1)
    with pytest.raises(QuotaExceededError, match="team ml: tokens per minute"):
        await quotas.reserve(limits, tokens=30, usd=1)
    assert used(await quotas.usage(limits)) == [1, 80, 1.0]


async def test_the_first_refusing_limit_is_named(quotas: Quotas) -> None:
    await quotas.reserve([rpm(1), tpm(100)], tokens=100, usd=0)
    with pytest.raises(QuotaExceededError, match="team ml: tokens per minute"):
        await quotas.reserve([tpm(100), rpm(1)], tokens=1, usd=0)
    with pytest.raises(QuotaExceededError, match="key k1: requests per minute"):
        await quotas.reserve([rpm(1), tpm(100)], tokens=1, usd=0)


async def test_limit_zero_refuses_everything(quotas: Quotas) -> None:
    zero_tokens = Limit("key:k1", "tokens", "day", 0, "key k1: tokens per day")
    for limits, tokens, usd in [
        ([rpm(0)], 0, 0.0),
        ([zero_tokens], 0, 0.0),
        ([usd_per_day(0)], 0, 0.0),
    ]:
        with pytest.raises(QuotaExceededError, match=r"\(limit \$?0\)"):
            await quotas.reserve(limits, tokens=tokens, usd=usd)
    assert used(await quotas.usage([rpm(0), zero_tokens, usd_per_day(0)])) == [0, 0, 0]


async def test_an_estimate_over_the_whole_limit_is_refused(quotas: Quotas) -> None:
    with pytest.raises(QuotaExceededError) as refused:
        await quotas.reserve([tpm(1000)], tokens=5000, usd=0)
    assert "this request alone is estimated at 5,000" in refused.value.message
    assert int(refused.value.headers["Retry-After"]) >= 1


async def test_usd_budget_is_exact_with_estimates(quotas: Quotas) -> None:
    limits = [usd_per_day(1.0)]
    assert await admitted(quotas, limits, 12, usd=0.1) == 10  # ten dimes make exactly $1
    with pytest.raises(QuotaExceededError, match=r"team ml: USD per day \(limit \$1\)"):
        await quotas.reserve(limits, tokens=0, usd=0.0)


async def test_usd_budget_refuses_once_actual_spend_reaches_it(quotas: Quotas) -> None:
    limits = [usd_per_day(2.5)]
    reservation = await quotas.reserve(limits, tokens=0, usd=0.25)
    await quotas.reserve(limits, tokens=0, usd=0.5)
    with pytest.raises(QuotaExceededError):
        await quotas.reserve(limits, tokens=0, usd=2.0)  # 0.75 + 2.0 would pass the budget
    await quotas.settle(reservation, tokens=0, usd=2.0)  # the call cost more than estimated
    with pytest.raises(QuotaExceededError):
        await quotas.reserve(limits, tokens=0, usd=0.0)  # $2.50 spent: even $0 is refused
    assert used(await quotas.usage(limits)) == [2.5]


async def test_no_limits_is_a_free_no_op() -> None:
    # A store that cannot be reached proves the store is never asked.
    quotas = Quotas(RedisCounterStore(DEAD_REDIS_URL), failure_mode="closed")
    reservation = await quotas.reserve([], tokens=100, usd=1.0)
    assert reservation.enforced
    await quotas.settle(reservation, tokens=500, usd=2.0)
    await quotas.release(reservation)
    await quotas.aclose()


async def test_a_counter_limited_twice_is_charged_once(quotas: Quotas) -> None:
    await quotas.reserve([rpm(5), rpm(3)], tokens=0, usd=0)
    assert used(await quotas.usage([rpm(5)])) == [1]
    await quotas.reserve([rpm(5), rpm(3)], tokens=0, usd=0)
    await quotas.reserve([rpm(5), rpm(3)], tokens=0, usd=0)
    with pytest.raises(QuotaExceededError, match=r"\(limit 3\)"):
        await quotas.reserve([rpm(5), rpm(3)], tokens=0, usd=0)


# -- settling and releasing ---------------------------------------------------------------------


async def test_settle_adjusts_tokens_and_usd_up_and_down(quotas: Quotas) -> None:
    limits = [rpm(10), tpm(1000), usd_per_day(10)]
    reservation = await quotas.reserve(limits, tokens=100, usd=0.5)
    await quotas.settle(reservation, tokens=300, usd=0.8)
    assert used(await quotas.usage(limits)) == [1, 300, 0.8]
    await quotas.settle(reservation, tokens=50, usd=0.1)
    assert used(await quotas.usage(limits)) == [1, 50, 0.1]
    await quotas.settle(reservation, tokens=0, usd=0)  # the upstream call failed: refund usage
    assert used(await quotas.usage(limits)) == [1, 0, 0]


async def test_settle_never_takes_a_counter_below_zero(
    quotas: Quotas, store: CounterStore, clock: FakeClock
) -> None:
    limits = [tpm(1000), usd_per_day(10)]
    reservation = await quotas.reserve(limits, tokens=100, usd=1.0)
    # Something else lowered the counters meanwhile (here: the store directly).
    await store.adjust(
        [Adjustment(bucket.key, -(10**9), bucket.window_end) for bucket in reservation.buckets],
        clock(),
    )
    assert used(await quotas.usage(limits)) == [0, 0]
    await quotas.reserve(limits, tokens=40, usd=0.5)
    await quotas.settle(reservation, tokens=0, usd=0)  # -100 tokens, -$1 from 40 and $0.50
    assert used(await quotas.usage(limits)) == [0, 0]


async def test_release_gives_the_request_back(quotas: Quotas) -> None:
    limits = [rpm(1), tpm(1000)]
    reservation = await quotas.reserve(limits, tokens=200, usd=0)
    with pytest.raises(QuotaExceededError):
        await quotas.reserve(limits, tokens=0, usd=0)
    await quotas.release(reservation)
    assert used(await quotas.usage(limits)) == [0, 0]
    again = await quotas.reserve(limits, tokens=10, usd=0)
    await quotas.release(reservation)  # a second release gives nothing back
    await quotas.settle(reservation, tokens=999, usd=0)  # nor does settling it afterwards
    assert used(await quotas.usage(limits)) == [1, 10]
    assert again.enforced


async def test_a_new_window_admits_again(quotas: Quotas, clock: FakeClock) -> None:
    limits = [rpm(2)]
    assert await admitted(quotas, limits, 3) == 2
    with pytest.raises(QuotaExceededError) as refused:
        await quotas.reserve(limits, tokens=0, usd=0)
    clock.advance(int(refused.value.headers["Retry-After"]))
    assert await admitted(quotas, limits, 3) == 2


async def test_settle_after_rollover_adjusts_the_window_reserved_in(
    quotas: Quotas, clock: FakeClock
) -> None:
    limits = [tpm(1000)]
    reservation = await quotas.reserve(limits, tokens=100, usd=0)
    clock.advance(60)
    await quotas.reserve(limits, tokens=10, usd=0)
    await quotas.settle(reservation, tokens=400, usd=0)
    assert used(await quotas.usage(limits)) == [10]
    clock.advance(-60)
    assert used(await quotas.usage(limits)) == [400]


async def test_usage_reports_every_counter(quotas: Quotas) -> None:
    limits = [rpm(10), tpm(1000), usd_per_day(5)]
    await quotas.reserve(limits, tokens=100, usd=1.25)
    await quotas.reserve(limits, tokens=50, usd=0.5)
    assert await quotas.usage(limits) == [
        {
            "scope": "key:k1",
            "metric": "requests",
            "window": "minute",
            "limit": 10,
            "used": 2,
            "remaining": 8,
            "resets_at": "2027-01-15T08:01:00Z",
        },
        {
            "scope": "team:ml",
            "metric": "tokens",
            "window": "minute",
            "limit": 1000,
            "used": 150,
            "remaining": 850,
            "resets_at": "2027-01-15T08:01:00Z",
        },
        {
            "scope": "team:ml",
            "metric": "usd",
            "window": "day",
            "limit": 5.0,
            "used": 1.75,
            "remaining": 3.25,
            "resets_at": "2027-01-16T00:00:00Z",
        },
    ]


async def test_memory_store_drops_expired_buckets(clock: FakeClock) -> None:
    store = MemoryCounterStore()
    quotas = Quotas(store, clock=clock)
    await quotas.reserve([rpm(10), tpm(1000)], tokens=5, usd=0)
    assert len(store) == 2
    clock.advance(86_400)
    await quotas.reserve([rpm(10)], tokens=0, usd=0)
    assert len(store) == 1


async def test_redis_counters_expire_after_their_window(prefix: str, clock: FakeClock) -> None:
    quotas = Quotas(RedisCounterStore(REDIS_URL, prefix=prefix), clock=clock)
    await quotas.reserve([rpm(10), usd_per_day(10)], tokens=0, usd=1)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = sorted([key async for key in client.scan_iter(match=prefix + "*")])
        assert [key.decode().removeprefix(prefix) for key in keys] == [
            "key:k1:requests:minute:2027-01-15T08:00",
            "team:ml:usd:day:2027-01-15",
        ]
        ttls = [await client.ttl(key) for key in keys]
        # The window's end (30 s and 15 h 59 min 30 s away) plus a minute's grace.
        assert 85 <= ttls[0] <= 90
        assert 57_600 <= ttls[1] <= 57_630
        assert await client.get(keys[1]) == b"1000000"  # micro-dollars
    finally:
        await client.aclose()
        await quotas.aclose()


# -- replicas ------------------------------------------------------------------------------------


async def test_exactly_the_limit_is_admitted_across_two_replicas(
    prefix: str, clock: FakeClock
) -> None:
    replicas = [
        Quotas(RedisCounterStore(REDIS_URL, prefix=prefix), clock=clock),
        Quotas(RedisCounterStore(REDIS_URL, prefix=prefix), clock=clock),
    ]
    limits = [rpm(50), tpm(1_000_000)]

    async def attempt(quotas: Quotas) -> bool:
        try:
            await quotas.reserve(limits, tokens=10, usd=0)
        except QuotaExceededError:
            return False
        return True

    try:
        results = await asyncio.gather(*(attempt(replicas[i % 2]) for i in range(300)))
        assert sum(results) == 50
        assert used(await replicas[0].usage(limits)) == [50, 500]
    finally:
        for quotas in replicas:
            await quotas.aclose()


# -- the store failing ---------------------------------------------------------------------------


async def repeat(action: Callable[[], Awaitable[object]], times: int) -> None:
    for _ in range(times):
        await action()


async def test_failing_open_admits_unenforced(caplog: pytest.LogCaptureFixture) -> None:
    quotas = build_quotas(DEAD_REDIS_URL, "open")
    reservations: list[Reservation] = []

    async def reserve() -> None:
        reservations.append(await quotas.reserve([rpm(1)], tokens=10, usd=0.1))

    try:
        await repeat(reserve, 200)
        assert len(reservations) == 200
        assert all(not reservation.enforced for reservation in reservations)
        await quotas.settle(reservations[0], tokens=20, usd=0.2)  # never raises
        await quotas.release(reservations[1])
    finally:
        await quotas.aclose()
    warnings = [record for record in caplog.records if "quota store unavailable" in record.message]
    assert len(warnings) == 1  # rate-limited


async def test_failing_closed_refuses_with_503() -> None:
    quotas = build_quotas(DEAD_REDIS_URL, "closed")

    async def reserve() -> None:
        with pytest.raises(QuotaUnavailableError) as refused:
            await quotas.reserve([rpm(1)], tokens=10, usd=0.1)
        assert refused.value.status_code == 503
        assert refused.value.code == "quota_unavailable"

    try:
        await repeat(reserve, 200)
        with pytest.raises(QuotaUnavailableError):
            await quotas.usage([rpm(1)])
    finally:
        await quotas.aclose()


class Blackhole:
    """A TCP server that accepts connections and never answers, like a hung Redis."""

    def __init__(self) -> None:
        self.connections = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def _accept(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)

    async def __aexit__(self, *_: object) -> None:
        for writer in self._writers:
            writer.close()
        self.server.close()


async def test_a_hung_redis_costs_one_timeout_per_circuit_period() -> None:
    hole = Blackhole()
    async with hole as url:
        store = RedisCounterStore(url, timeout_s=0.2, circuit_s=0.5)
        quotas = Quotas(store, failure_mode="open")

        async def reserve() -> None:
            assert not (await quotas.reserve([rpm(5)], tokens=0, usd=0)).enforced

        try:
            await reserve()  # waits out the read timeout on the one connection it opens
            assert hole.connections == 1
            # The circuit is open: Redis is not tried again, however many calls come.
            await repeat(reserve, 100)
            assert hole.connections == 1
            await asyncio.sleep(0.5)
            # One probe after the circuit period, while concurrent calls still skip Redis.
            await asyncio.gather(*(reserve() for _ in range(20)))
            assert hole.connections == 2
        finally:
            await quotas.aclose()


class FlakyProxy:
    """Forwards TCP to the real Redis, and can be taken down and brought back."""

    def __init__(self) -> None:
        target = urlsplit(REDIS_URL)
        self._target = (target.hostname or "127.0.0.1", target.port or 6379)
        self._path = target.path
        self.up = True
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}{self._path}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.close()
            return
        upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        self._writers += [writer, upstream_writer]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65_536):
                    sink.write(data)
                    await sink.drain()
            finally:
                sink.close()

        await asyncio.gather(
            pipe(reader, upstream_writer), pipe(upstream_reader, writer), return_exceptions=True
        )

    def go_down(self) -> None:
        self.up = False
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    def close(self) -> None:
        self.go_down()
        self.server.close()


async def test_quotas_are_enforced_again_once_redis_is_back(prefix: str) -> None:
    proxy = FlakyProxy()
    store = RedisCounterStore(await proxy.start(), prefix=prefix, circuit_s=0.2)
    quotas = Quotas(store, failure_mode="open")
    limits = [rpm(100), tpm(1_000_000)]
    try:
        assert (await quotas.reserve(limits, tokens=10, usd=0)).enforced
        proxy.go_down()
        down = await quotas.reserve(limits, tokens=10, usd=0)
        assert not down.enforced
        proxy.up = True
        await asyncio.sleep(0.25)
        # Usage of a request let through while Redis was down is recorded when it settles.
        await quotas.settle(down, tokens=70, usd=0)
        assert (await quotas.reserve(limits, tokens=10, usd=0)).enforced
        assert used(await quotas.usage(limits)) == [2, 90]
    finally:
        await quotas.aclose()
        proxy.close()


async def test_build_quotas_picks_the_store() -> None:
    memory = build_quotas(None)
    redis_backed = build_quotas(REDIS_URL, "closed")
    assert isinstance(memory.store, MemoryCounterStore)
    assert isinstance(redis_backed.store, RedisCounterStore)
    assert redis_backed.failure_mode == "closed"
    await memory.aclose()
    await redis_backed.aclose()


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_limit_zero_is_refused_even_when_the_store_is_down(mode: FailureMode) -> None:
    quotas = build_quotas(DEAD_REDIS_URL, mode)
    with pytest.raises(QuotaExceededError):
        await quotas.reserve([rpm(0)], tokens=0, usd=0)
    await quotas.aclose()
