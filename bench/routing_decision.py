"""What routing and the cache add to a request, measured in process with no network.

* routing: `Router.execute` over a group of three deployments (strategy choice, health and
  in-flight bookkeeping, attempt trace) around an upstream call that returns at once, against
  calling that same function directly;
* cache: computing the exact cache key of a realistic request plus a memory-tier lookup (a miss,
  which is what every uncached request pays, and a hit).

    python bench/routing_decision.py [--rounds 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from keel.cache import ResponseCache, cache_key
from keel.config import Settings
from keel.providers import Provider
from keel.routing import AttemptTrace, build_router
from keel.schemas import ChatCompletionRequest

RESPONSE = {
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 1},
}
REQUEST = ChatCompletionRequest.model_validate(
    {
        "model": "chat",
        "temperature": 0,
        "max_tokens": 256,
        "messages": [
            {"role": "system", "content": "You answer questions about our help articles. " * 8},
            {"role": "user", "content": "How do I reset my password on the mobile app?"},
        ],
    }
)


async def upstream(_provider: Provider) -> dict[str, Any]:
    return RESPONSE


def micros(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p99 = ordered[int(len(ordered) * 0.99) - 1]
    return f"p50 {p50 * 1e6:7.2f} µs   p99 {p99 * 1e6:7.2f} µs"


async def run(rounds: int) -> None:
    settings = Settings.model_validate(
        {
            "local_models": {"chat": False, "embeddings": False},
            "groups": [
                {
                    "id": "chat",
                    "deployments": [
                        {"provider": "openai", "model": name, "api_base": "http://127.0.0.1:9"}
                        for name in ("east", "west", "north")
                    ],
                }
            ],
        }
    )
    router = build_router(settings, http=None)  # type: ignore[arg-type]
    group = router.group("chat")
    print(f"{rounds} rounds each, after a warm-up\n")
    for strategy in ("weighted", "least_inflight", "lowest_latency", "priority", "lowest_cost"):
        group.strategy = strategy  # type: ignore[assignment]
        direct, routed = [], []
        for _ in range(rounds // 10):
            await router.execute(group, upstream, AttemptTrace())
        for _ in range(rounds):
            started = time.perf_counter()
            await upstream(group.first_provider)
            direct.append(time.perf_counter() - started)
            started = time.perf_counter()
            await router.execute(group, upstream, AttemptTrace())
            routed.append(time.perf_counter() - started)
        added = [r - d for r, d in zip(routed, direct, strict=True)]
        print(f"routing ({strategy:>14}): {micros(added)}   (added over a direct call)")

    cache = ResponseCache(max_entries=10_000)
    hit_key = cache_key("chat", REQUEST)
    await cache.set(hit_key, RESPONSE | {"id": "x", "object": "chat.completion"})
    misses, hits = [], []
    for index in range(rounds):
        started = time.perf_counter()
        await cache.get(cache_key("chat", REQUEST, scope=str(index)))
        misses.append(time.perf_counter() - started)
        started = time.perf_counter()
        await cache.get(cache_key("chat", REQUEST))
        hits.append(time.perf_counter() - started)
    print(f"cache key + lookup (miss): {micros(misses)}")
    print(f"cache key + lookup (hit):  {micros(hits)}")
    await cache.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20_000)
    asyncio.run(run(parser.parse_args().rounds))


if __name__ == "__main__":
    main()
