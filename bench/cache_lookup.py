"""Latency of response-cache lookups, the part of a request the cache adds.

* exact, memory tier: `cache_key()` on a realistic request (system prompt, four turns, two
  tools, temperature 0) plus `ResponseCache.get()` answering from memory;
* exact, Redis tier: the same, with the entry only in Redis (the local cache holds one entry and
  two keys alternate, so every lookup misses memory and reads Redis);
* semantic, 10,000 entries in one scope: the query embedded by the bundled all-MiniLM-L6-v2
  through Keel's sentence-transformers provider, and the search. 200 entries are real
  embeddings of questions; the other 9,800 are random unit vectors (the search costs the same
  whatever the vectors hold). Entries reach the cache the way a restarted replica gets them:
  written to a SQLite second tier, loaded on first use (that load is timed too). Each query is
  a paraphrase of a stored question, so the embedding is never memoized.

    python bench/cache_lookup.py
    python bench/cache_lookup.py --redis-url redis://127.0.0.1:6379/0 --iterations 20000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from keel.cache import EmbedFn, ResponseCache, SemanticCache, cache_key, provider_embedder
from keel.cache.redis_tier import RedisTier
from keel.cache.sqlite_tier import SQLiteTier
from keel.config import DeploymentConfig
from keel.providers.local_embeddings import SentenceTransformersProvider
from keel.schemas import ChatCompletionRequest

TARGET_EXACT_P50_MS = 1.0
TARGET_SEMANTIC_P50_MS = 10.0
GROUP = "gpt-4o-mini"
COUNTRIES = [
    "France", "Germany", "Italy", "Spain", "Portugal", "Japan", "China", "India", "Brazil",
    "Argentina", "Canada", "Mexico", "Egypt", "Kenya", "Nigeria", "Australia", "Norway", "Sweden",
    "Finland", "Poland", "Greece", "Turkey", "Peru", "Chile", "Vietnam", "Thailand", "Indonesia",
    "Ireland", "Austria", "Hungary", "Morocco", "Ghana", "Colombia", "Iceland", "Denmark",
    "Belgium", "Netherlands", "Switzerland", "Romania", "Ukraine", "Pakistan", "Iran", "Iraq",
    "Israel", "Jordan", "Nepal", "Mongolia", "Cuba", "Jamaica", "Uruguay",
]  # fmt: skip
STORED = [
    "What is the capital of {}?",
    "How many people live in {}?",
    "What language is spoken in {}?",
    "What currency does {} use?",
]
ASKED = [
    "What's the capital city of {}?",
    "How many people live in {} today?",
    "Which language do people speak in {}?",
    "What is the currency used in {}?",
]


def realistic_request(question: str = "And what is its population?") -> ChatCompletionRequest:
    tools = [
        {
            "type": "function",
            "function": {
                "name": name,
                "description": f"Look up the {name.split('_')[1]} of a city.",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "units": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
        for name in ("get_weather", "get_population")
    ]
    system = "You are a helpful travel assistant. Answer briefly, cite sources. " * 8
    return ChatCompletionRequest.model_validate(
        {
            "model": "gpt-4o-mini",
            "temperature": 0,
            "max_tokens": 256,
            "stream": True,
            "user": "user-123",
            "tools": tools,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "The capital of France is Paris."},
                {"role": "user", "content": "Tell me one thing to see there."},
                {"role": "assistant", "content": "The Louvre, the world's largest art museum."},
                {"role": "user", "content": question},
            ],
        }
    )


def answer(
    text: str = "Paris has about 2.1 million inhabitants in the city proper. " * 12,
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1_800_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 412, "completion_tokens": 160, "total_tokens": 572},
    }


async def timed(action: Callable[[int], Awaitable[Any]], iterations: int) -> list[float]:
    """Milliseconds per call of `action(i)`."""
    samples = []
    for index in range(iterations):
        started = time.perf_counter()
        await action(index)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def report(label: str, samples: list[float], target_ms: float | None = None) -> None:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    verdict = ""
    if target_ms is not None:
        verdict = f"  target p50 <= {target_ms:g} ms: {'PASS' if p50 <= target_ms else 'FAIL'}"
    print(f"{label:<52} p50 {p50:8.3f} ms   p99 {p99:8.3f} ms   (n={len(samples)}){verdict}")


async def exact_memory(iterations: int) -> None:
    cache = ResponseCache()
    request = realistic_request()
    await cache.set(cache_key(GROUP, request, scope="key-1"), answer())

    async def lookup(_: int) -> None:
        assert await cache.get(cache_key(GROUP, request, scope="key-1")) is not None

    await timed(lookup, 1000)
    report("exact, memory tier: key + get", await timed(lookup, iterations), TARGET_EXACT_P50_MS)
    key = cache_key(GROUP, request, scope="key-1")

    async def key_only(_: int) -> None:
        cache_key(GROUP, request, scope="key-1")

    async def get_only(_: int) -> None:
        await cache.get(key)

    report("  of which cache_key()", await timed(key_only, iterations))
    report("  of which get()", await timed(get_only, iterations))


async def exact_redis(url: str, iterations: int) -> None:
    prefix = f"keel-bench:{uuid.uuid4().hex}:"
    writer = ResponseCache(second_tier=RedisTier(url, prefix=prefix))
    reader_tier = RedisTier(url, prefix=prefix)
    reader = ResponseCache(max_entries=1, second_tier=reader_tier)
    requests = [realistic_request("And its population?"), realistic_request("And its area?")]
    for request in requests:
        await writer.set(cache_key(GROUP, request), answer(), ttl_s=600)
    await writer.flush()

    async def lookup(index: int) -> None:
        assert await reader.get(cache_key(GROUP, requests[index % 2])) is not None

    try:
        await timed(lookup, 500)
        report("exact, Redis tier (memory miss): key + get", await timed(lookup, iterations))
        assert reader.stats.memory_hits == 0
    finally:
        keys = [key async for key in reader_tier.client.scan_iter(match=prefix + "*")]
        if keys:
            await reader_tier.client.delete(*keys)
        await writer.close()
        await reader.close()


class PrecomputedEmbedder:
    """The real embedding function, except for texts embedded beforehand (the entries to fill
    the cache with), so filling it does not run the model once per entry."""

    def __init__(self, embed: EmbedFn, fixed: dict[str, NDArray[Any]]) -> None:
        self.embed = embed
        self.fixed = fixed

    async def __call__(self, texts: list[str]) -> NDArray[Any]:
        if all(text in self.fixed for text in texts):
            return np.stack([self.fixed[text] for text in texts])
        return await self.embed(texts)


async def semantic(entries: int) -> None:
    config = DeploymentConfig(
        id="all-minilm-l6-v2", provider="sentence_transformers", kind="embedding"
    )
    provider = SentenceTransformersProvider(config, http=None)  # type: ignore[arg-type]
    await provider.start()
    embed = provider_embedder(provider, config.id)
    stored = [template.format(country) for template in STORED for country in COUNTRIES]
    asked = [template.format(country) for template in ASKED for country in COUNTRIES]
    real = await embed(stored)
    noise = np.random.default_rng(0).standard_normal((entries - len(stored), real.shape[1]))
    fixed = {f"filler question {index}": vector for index, vector in enumerate(noise)}
    fixed.update(zip(stored, real, strict=True))
    filler = PrecomputedEmbedder(embed, fixed)
    with tempfile.TemporaryDirectory() as home:
        path = Path(home) / "cache.sqlite3"
        writer = SemanticCache(filler, second_tier=SQLiteTier(path, max_entries=2 * entries))
        for count, text in enumerate(fixed, start=1):
            await writer.store(GROUP, realistic_request(text), answer("A cached answer."))
            if count % 500 == 0:
                await writer.flush()
        await writer.close()

        # A fresh instance, as after a restart or on another replica: it loads on first use.
        cache = SemanticCache(embed, second_tier=SQLiteTier(path), sync_interval_s=3600)
        started = time.perf_counter()
        await cache.lookup(GROUP, realistic_request("warm-up question"))
        loaded_ms = (time.perf_counter() - started) * 1000
        print(f"semantic: first use loads {entries} entries from SQLite in {loaded_ms:.0f} ms")
        queries = [realistic_request(text) for text in asked]
        hits = 0
        lookups: list[float] = []
        embeddings: list[float] = []
        searches: list[float] = []
        # Interleaved per query, so that all three see the same load on the machine.
        for query, text in zip(queries, asked, strict=True):
            started = time.perf_counter()
            hits += await cache.lookup(GROUP, query) is not None
            lookups.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await embed([text + " Please answer."])
            embeddings.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await cache.lookup(GROUP, query)  # its embedding is memoized now
            searches.append((time.perf_counter() - started) * 1000)
        report(f"semantic at {entries} entries: embed + search", lookups, TARGET_SEMANTIC_P50_MS)
        report("  embedding alone (provider, one text)", embeddings)
        report("  search alone (lookup, embedding memoized)", searches)
        print(
            f"  paraphrases answered from the cache at threshold {cache.threshold}: "
            f"{hits}/{len(asked)}"
        )
        await cache.close()
    await provider.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=10_000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--skip-semantic", action="store_true")
    args = parser.parse_args()
    cores = os.cpu_count()
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"{cores} CPU cores, load average {load} (timings on a busy machine are noisy)")
    await exact_memory(args.iterations)
    await exact_redis(args.redis_url, args.iterations // 5)
    if not args.skip_semantic:
        await semantic(args.entries)


if __name__ == "__main__":
    asyncio.run(main())
