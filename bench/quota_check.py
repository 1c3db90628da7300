"""Latency of quota checks, the part of a request the quota engine adds.

Three limits, as a typical request carries: the key's requests per minute, its team's tokens per
minute and its team's spend per day. Each iteration is `reserve` (the estimate) then `settle`
(the actual usage), run one after another, never concurrently:

* memory store: counters in this process;
* Redis store on loopback: one EVALSHA for `reserve`, one for `settle`;
* the floor under the Redis figures: a bare PING round trip through the same client library.

The limits are high enough that nothing is refused, so every reserve increments all three
counters. Keys live under a fresh prefix and are deleted at the end.

    python bench/quota_check.py
    python bench/quota_check.py --redis-url redis://127.0.0.1:6379/0 --iterations 20000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as redis

from keel.governance.quota_store import MemoryCounterStore, RedisCounterStore
from keel.governance.quotas import Limit, Quotas, Reservation

TARGET_RESERVE_REDIS_P50_US = 300.0  # the budget for auth + quota check on the request path
LIMITS = [
    Limit("key:key_bench", "requests", "minute", 1e12, "key key_bench: requests per minute"),
    Limit("team:bench", "tokens", "minute", 1e15, "team bench: tokens per minute"),
    Limit("team:bench", "usd", "day", 1e6, "team bench: USD per day"),
]


async def timed(action: Callable[[], Awaitable[Any]], iterations: int) -> list[float]:
    """Microseconds per call of `action()`."""
    samples = []
    for _ in range(iterations):
        started = time.perf_counter()
        await action()
        samples.append((time.perf_counter() - started) * 1e6)
    return samples


def report(label: str, samples: list[float], target_us: float | None = None) -> None:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    verdict = ""
    if target_us is not None:
        verdict = f"  target p50 <= {target_us:g} us: {'PASS' if p50 <= target_us else 'FAIL'}"
    print(f"{label:<44} p50 {p50:8.1f} us   p99 {p99:8.1f} us   (n={len(samples)}){verdict}")


async def measure(name: str, quotas: Quotas, iterations: int, target_us: float | None) -> None:
    async def reserve_and_settle() -> None:
        reservation = await quotas.reserve(LIMITS, tokens=1200, usd=0.0042)
        await quotas.settle(reservation, tokens=950, usd=0.0031)

    reservations: list[Reservation] = []

    async def reserve() -> None:
        reservations.append(await quotas.reserve(LIMITS, tokens=1200, usd=0.0042))

    async def settle() -> None:
        await quotas.settle(reservations.pop(), tokens=950, usd=0.0031)

    await timed(reserve_and_settle, min(2000, iterations))  # warm-up
    report(f"{name}: reserve + settle", await timed(reserve_and_settle, iterations))
    report("  of which reserve", await timed(reserve, iterations), target_us)
    assert all(reservation.enforced for reservation in reservations)
    report("  of which settle", await timed(settle, iterations))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=10_000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    cores = os.cpu_count()
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"{cores} CPU cores, load average {load} (timings on a busy machine are noisy)")
    print(f"{len(LIMITS)} limits: " + "; ".join(limit.label for limit in LIMITS))

    memory = Quotas(MemoryCounterStore())
    await measure("memory store", memory, args.iterations, None)
    await memory.aclose()

    prefix = f"keel-bench:{uuid.uuid4().hex}:quota:"
    store = RedisCounterStore(args.redis_url, prefix=prefix)
    shared = Quotas(store, failure_mode="closed")  # a failure must show, not be skipped
    try:
        await timed(store.client.ping, 2000)
        report("Redis PING round trip (the floor)", await timed(store.client.ping, args.iterations))
        await measure("Redis store", shared, args.iterations, TARGET_RESERVE_REDIS_P50_US)
        # The same floor again, after: the machine's load may have moved in between.
        report("Redis PING round trip, again", await timed(store.client.ping, args.iterations))
    finally:
        client = redis.Redis.from_url(args.redis_url)
        keys = [key async for key in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
        await shared.aclose()


if __name__ == "__main__":
    asyncio.run(main())
