"""The semantic cache: similarity threshold, scopes, expiry, and sharing through the tiers."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from keel.cache import Caches, SemanticCache, build_cache
from keel.cache.tier import StoredVector
from tests.cache.helpers import REDIS_URL, FakeClock, FakeEmbedder, chat, completion

QUESTION = "What is the capital of France?"


async def test_a_similar_question_hits_above_the_threshold(
    embedder: FakeEmbedder, clock: FakeClock
) -> None:
    embedder.near("Which city is the capital of France?", QUESTION, 0.97)
    embedder.near("What is the capital of Germany?", QUESTION, 0.90)
    cache = SemanticCache(embedder, clock=clock)
    assert await cache.lookup("g", chat(QUESTION)) is None
    assert await cache.store("g", chat(QUESTION), completion("Paris."))
    assert await cache.lookup("g", chat("Which city is the capital of France?")) == completion(
        "Paris."
    )
    assert await cache.lookup("g", chat("What is the capital of Germany?")) is None
    germany = chat("What is the capital of Germany?")
    found = await cache.lookup("g", germany, threshold=0.85, guard="off")
    assert found == completion("Paris.")
    assert (cache.stats.hits, cache.stats.misses, cache.stats.stores) == (2, 2, 1)
    # Similar enough, but about another country: the precision guard refuses it.
    refused = await cache.match("g", germany, threshold=0.85)
    assert (refused.response, refused.refusal) == (None, "entities")
    assert cache.stats.refused == {"entities": 1}


async def test_the_lookup_embedding_is_reused_by_the_store(
    embedder: FakeEmbedder, clock: FakeClock
) -> None:
    cache = SemanticCache(embedder, clock=clock)
    await cache.lookup("g", chat(QUESTION))
    await cache.store("g", chat(QUESTION), completion())
    assert embedder.calls == 1


async def test_scopes_and_groups_are_isolated(embedder: FakeEmbedder, clock: FakeClock) -> None:
    cache = SemanticCache(embedder, clock=clock)
    await cache.store("g", chat(QUESTION), completion("Paris."), scope="alice")
    assert await cache.lookup("g", chat(QUESTION), scope="alice") is not None
    assert await cache.lookup("g", chat(QUESTION), scope="bob") is None
    assert await cache.lookup("g", chat(QUESTION)) is None
    assert await cache.lookup("other", chat(QUESTION), scope="alice") is None


async def test_everything_but_the_question_must_match_exactly(
    embedder: FakeEmbedder, clock: FakeClock
) -> None:
    cache = SemanticCache(embedder, clock=clock)
    await cache.store("g", chat(QUESTION, temperature=0), completion())
    assert await cache.lookup("g", chat(QUESTION, temperature=0, stream=True)) is not None
    assert await cache.lookup("g", chat(QUESTION, temperature=0, max_tokens=5)) is None
    pirate = chat(QUESTION, temperature=0)
    pirate.messages[0].content = "You are a pirate."
    assert await cache.lookup("g", pirate) is None


async def test_ineligible_requests_and_unfinished_answers_are_skipped(
    embedder: FakeEmbedder, clock: FakeClock
) -> None:
    cache = SemanticCache(embedder, clock=clock)
    unfinished = completion()
    unfinished["choices"][0]["finish_reason"] = None
    assert not await cache.store("g", chat(QUESTION), unfinished)
    assert not await cache.store("g", chat("  "), completion())
    assert await cache.lookup("g", chat("  ")) is None
    assert cache.stats.ineligible == 1
    assert embedder.calls == 0


async def test_entries_expire(embedder: FakeEmbedder, clock: FakeClock) -> None:
    cache = SemanticCache(embedder, default_ttl_s=60, clock=clock)
    await cache.store("g", chat(QUESTION), completion())
    await cache.store("g", chat("Name France's capital."), completion(), ttl_s=5)
    clock.advance(5)
    assert await cache.lookup("g", chat("Name France's capital.")) is None
    assert await cache.lookup("g", chat(QUESTION)) is not None
    clock.advance(55)
    assert await cache.lookup("g", chat(QUESTION)) is None


async def test_a_full_scope_drops_its_oldest_entries(
    embedder: FakeEmbedder, clock: FakeClock
) -> None:
    cache = SemanticCache(embedder, max_entries_per_scope=10, clock=clock)
    for index in range(11):
        await cache.store("g", chat(f"question {index}"), completion(f"answer {index}"))
    assert await cache.lookup("g", chat("question 0")) is None
    assert await cache.lookup("g", chat("question 1")) == completion("answer 1")
    assert await cache.lookup("g", chat("question 10")) == completion("answer 10")


async def test_search_at_ten_thousand_entries_is_fast(clock: FakeClock) -> None:
    embedder = FakeEmbedder(dimension=384)
    cache = SemanticCache(embedder, clock=clock)
    index = await cache._index("g", None)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((10_000, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    prompt_context = 0
    for row, vector in enumerate(vectors):
        record = StoredVector(f"e{row}", prompt_context, b"", b"{}", clock() + 60)
        index.add(record, vector, clock())
    timings = []
    for row in range(200):
        started = time.perf_counter()
        assert [
            found for _, found in index.search(vectors[row], prompt_context, clock(), 0.95)
        ] == [row]
        timings.append(time.perf_counter() - started)
    # The target, 10 ms, includes the embedding; the search alone takes about 1 ms on two
    # cores (bench/cache_lookup.py). The bound is loose so a busy machine does not fail it.
    assert statistics.median(timings) < 0.010


async def test_sqlite_shares_entries_with_a_later_instance(
    tmp_path: Path, embedder: FakeEmbedder, clock: FakeClock
) -> None:
    path = tmp_path / "cache.sqlite3"
    first = build_cache(sqlite_path=path, embed=embedder, clock=clock)
    assert first.semantic is not None
    await first.semantic.store("g", chat(QUESTION), completion("Paris."), scope="alice")
    await first.close()

    second = build_cache(sqlite_path=path, embed=embedder, clock=clock)
    assert second.semantic is not None
    assert await second.semantic.lookup("g", chat(QUESTION), scope="alice") == completion("Paris.")
    assert await second.semantic.lookup("g", chat(QUESTION), scope="bob") is None
    await second.close()


async def test_redis_shares_entries_between_replicas_incrementally(
    redis_prefix: str, embedder: FakeEmbedder, clock: FakeClock
) -> None:
    def replica() -> Caches:
        return build_cache(
            redis_url=REDIS_URL,
            redis_prefix=redis_prefix,
            embed=embedder,
            semantic_sync_interval_s=0.0,
            clock=clock,
        )

    replica_a, replica_b = replica(), replica()
    a, b = replica_a.semantic, replica_b.semantic
    assert a is not None and b is not None
    try:
        assert await b.lookup("g", chat(QUESTION)) is None
        await a.store("g", chat(QUESTION), completion("Paris."))
        await a.store("g", chat("Capital of Italy?"), completion("Rome."), ttl_s=5)
        await a.flush()
        assert await b.lookup("g", chat(QUESTION)) == completion("Paris.")
        assert await b.lookup("g", chat("Capital of Italy?")) == completion("Rome.")
        # B picked up A's two entries once; it does not hold them twice after another sync.
        index = await b._index("g", None)
        assert index.count == 2
        await b.store("g", chat("Capital of Spain?"), completion("Madrid."))
        await b.flush()
        assert await a.lookup("g", chat("Capital of Spain?")) == completion("Madrid.")
        assert (await a._index("g", None)).count == 3
        clock.advance(5)
        assert await b.lookup("g", chat("Capital of Italy?")) is None

        late = replica()
        assert late.semantic is not None
        assert await late.semantic.lookup("g", chat(QUESTION)) == completion("Paris.")
        assert await late.semantic.lookup("g", chat("Capital of Italy?")) is None
        await late.close()
    finally:
        await replica_a.close()
        await replica_b.close()


async def test_a_failing_embedding_model_costs_a_miss(clock: FakeClock) -> None:
    async def broken(texts: list[str]) -> NDArray[Any]:
        raise RuntimeError("model unavailable")

    cache = SemanticCache(broken, clock=clock)
    assert not await cache.store("g", chat(QUESTION), completion())
    assert await cache.lookup("g", chat(QUESTION)) is None
