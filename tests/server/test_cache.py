"""The response cache through the gateway: hits, streams, control, replicas, semantic."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from keel.config import Settings
from tests.conftest import flushed_records, running_app
from tests.fakes.openai import FakeOpenAI, Reply

REDIS_URL = "redis://127.0.0.1:6379/15"


def settings_for(home: Path, api_base: str, **extra: Any) -> Settings:
    return Settings.model_validate(
        {
            "home": str(home),
            "local_models": {"chat": False, "embeddings": False},
            "models": [
                {"id": "gpt", "provider": "openai", "model": "gpt-4o-mini", "api_base": api_base}
            ],
            **extra,
        }
    )


@pytest.fixture
async def keel(
    keel_home: Path, fake_openai_url: str
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with running_app(settings_for(keel_home, fake_openai_url)) as running:
        yield running


def ask(question: str | None = None, **params: Any) -> dict[str, Any]:
    content = question or f"question {uuid.uuid4().hex}"
    return {"model": "gpt", "messages": [{"role": "user", "content": content}], **params}


def sse_chunks(text: str) -> list[dict[str, Any]]:
    events = [line[6:] for line in text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(event) for event in events[:-1]]


async def test_temperature_zero_is_served_from_cache_the_second_time(
    keel: tuple[FastAPI, httpx.AsyncClient], fake_openai: FakeOpenAI
) -> None:
    app, client = keel
    body = ask(temperature=0)
    first = await client.post("/v1/chat/completions", json=body)
    await app.state.keel.gateway.caching.flush()
    second = await client.post("/v1/chat/completions", json=body)
    assert first.headers["x-keel-cache"] == "miss"
    assert second.headers["x-keel-cache"] == "hit"
    assert second.json()["choices"] == first.json()["choices"]
    assert second.headers["x-keel-cost-usd"] == "0.00000000"
    assert "x-keel-deployment" not in second.headers
    assert len(fake_openai.requests) == 1
    records = sorted(await flushed_records(app), key=lambda r: r["cache"])
    assert [(r["cache"], r["attempts"], r["cost_usd"] > 0) for r in records] == [
        ("hit", 0, False),
        ("miss", 1, True),
    ]


async def test_requests_that_are_not_deterministic_are_not_cached(
    keel: tuple[FastAPI, httpx.AsyncClient], fake_openai: FakeOpenAI
) -> None:
    _, client = keel
    body = ask(temperature=0.7)
    for _ in range(2):
        response = await client.post("/v1/chat/completions", json=body)
        assert "x-keel-cache" not in response.headers
    assert len(fake_openai.requests) == 2


async def test_cache_control_in_body_and_header(
    keel: tuple[FastAPI, httpx.AsyncClient], fake_openai: FakeOpenAI
) -> None:
    app, client = keel
    body = ask(cache={"ttl": 60})  # opting in with a ttl caches even without temperature 0
    await client.post("/v1/chat/completions", json=body)
    assert "cache" not in fake_openai.last.body  # Keel's field never reaches the provider
    await app.state.keel.gateway.caching.flush()
    hit = await client.post("/v1/chat/completions", json=body)
    assert hit.headers["x-keel-cache"] == "hit"
    bypass = await client.post(
        "/v1/chat/completions", json=body, headers={"x-keel-cache": "no-cache"}
    )
    assert bypass.headers["x-keel-cache"] == "miss"
    assert len(fake_openai.requests) == 2

    unstored = ask(temperature=0, cache={"no_store": True})
    await client.post("/v1/chat/completions", json=unstored)
    await app.state.keel.gateway.caching.flush()
    again = await client.post("/v1/chat/completions", json=unstored)
    assert again.headers["x-keel-cache"] == "miss"


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (ask(cache={"ttl": -1}), {}),
        (ask(cache={"ttl": "soon"}), {}),
        (ask(cache="yes"), {}),
        (ask(cache={"no_cache": True, "sometimes": 1}), {}),
        (ask(), {"x-keel-cache": "ttl=abc"}),
    ],
)
async def test_bad_cache_control_is_a_400_naming_the_field(
    keel: tuple[FastAPI, httpx.AsyncClient],
    fake_openai: FakeOpenAI,
    body: dict[str, Any],
    headers: dict[str, str],
) -> None:
    _, client = keel
    response = await client.post("/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "cache"
    assert fake_openai.requests == []


async def test_streams_are_stored_and_replayed_as_streams(
    keel: tuple[FastAPI, httpx.AsyncClient], fake_openai: FakeOpenAI
) -> None:
    app, client = keel
    body = ask(temperature=0, stream=True, stream_options={"include_usage": True})
    first = await client.post("/v1/chat/completions", json=body)
    await app.state.keel.gateway.caching.flush()
    second = await client.post("/v1/chat/completions", json=body)
    assert second.headers["x-keel-cache"] == "hit"

    def text(chunks: list[dict[str, Any]]) -> str:
        return "".join(
            c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
        )

    assert text(sse_chunks(second.text)) == text(sse_chunks(first.text))
    assert sse_chunks(second.text)[-1]["usage"]["completion_tokens"] > 0
    # The same request without streaming is a hit too: the stream was stored as a completion.
    plain = await client.post("/v1/chat/completions", json={**body, "stream": False})
    assert plain.headers["x-keel-cache"] == "hit"
    assert plain.json()["choices"][0]["message"]["content"] == text(sse_chunks(first.text))
    assert len(fake_openai.requests) == 1


async def test_replicas_share_the_cache_through_redis(
    tmp_path: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    body = ask(temperature=0)
    first_settings = settings_for(tmp_path / "a", fake_openai_url, redis_url=REDIS_URL)
    second_settings = settings_for(tmp_path / "b", fake_openai_url, redis_url=REDIS_URL)
    async with (
        running_app(first_settings) as (app_a, client_a),
        running_app(second_settings) as (_, client_b),
    ):
        assert (await client_a.post("/v1/chat/completions", json=body)).status_code == 200
        await app_a.state.keel.gateway.caching.flush()
        served = await client_b.post("/v1/chat/completions", json=body)
    assert served.headers["x-keel-cache"] == "hit"
    assert len(fake_openai.requests) == 1


async def test_semantic_cache_answers_a_paraphrase(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    settings = Settings.model_validate(
        {
            "home": str(keel_home),
            "local_models": {"chat": False, "embeddings": True},
            "groups": [
                {
                    "id": "gpt",
                    "deployments": [
                        {"provider": "openai", "model": "gpt-4o-mini", "api_base": fake_openai_url}
                    ],
                    "cache": {"semantic": True, "semantic_threshold": 0.85},
                }
            ],
        }
    )
    async with running_app(settings) as (app, client):
        # Fixed texts: the pair's similarity is a property of the embedding model, and a random
        # suffix moved it below the threshold about once in a hundred runs.
        await client.post(
            "/v1/chat/completions", json=ask("What is the capital city of France?", temperature=0)
        )
        await app.state.keel.gateway.caching.flush()
        paraphrase = await client.post(
            "/v1/chat/completions", json=ask("what's the capital of France", temperature=0)
        )
        unrelated = await client.post(
            "/v1/chat/completions", json=ask("How do I bake sourdough bread?", temperature=0)
        )
    assert paraphrase.headers["x-keel-cache"] == "hit"
    assert unrelated.headers["x-keel-cache"] == "miss"
    assert len(fake_openai.requests) == 2


def semantic_settings(
    home: Path, api_base: str, group_cache: dict[str, Any], **semantic: Any
) -> Settings:
    """One chat group on the fake upstream with the semantic cache on, and a `judge` group (its
    own upstream model name, so its answers can be scripted apart)."""
    return Settings.model_validate(
        {
            "home": str(home),
            "local_models": {"chat": False, "embeddings": True},
            "cache": {"semantic": semantic},
            "groups": [
                {
                    "id": "gpt",
                    "deployments": [
                        {"provider": "openai", "model": "gpt-4o-mini", "api_base": api_base}
                    ],
                    "cache": {"semantic": True, **group_cache},
                },
                {
                    "id": "judge",
                    "deployments": [
                        {"provider": "openai", "model": "judge-model", "api_base": api_base}
                    ],
                },
            ],
        }
    )


async def ask_twice(
    settings: Settings, cached: str, new: str
) -> tuple[httpx.Response, httpx.Response]:
    async with running_app(settings) as (app, client):
        first = await client.post("/v1/chat/completions", json=ask(cached, temperature=0))
        await app.state.keel.gateway.caching.flush()
        second = await client.post("/v1/chat/completions", json=ask(new, temperature=0))
    return first, second


# One minimal contrast per class the embedding blurs. The group's threshold is lowered to 0.5
# so that every one of them is a candidate for the similarity search: what keeps the cached
# answer from being served is the precision guard alone.
CONTRASTS = [
    (
        "numbers",
        "Summarize the refund policy for orders under $100",
        "Summarize the refund policy for orders under $50",
    ),
    (
        "negation",
        "Which plans include phone support?",
        "Which plans don't include phone support?",
    ),
    (
        "antonyms",
        "List the orders placed before January 5, 2024",
        "List the orders placed after January 5, 2024",
    ),
    ("entities", "What is the capital of France?", "What is the capital of Germany?"),
    ("dates", "What were total sales in March 2024?", "What were total sales in April 2024?"),
    (
        "code",
        "What does the `useEffect` hook do in React?",
        "What does the `useMemo` hook do in React?",
    ),
    ("quoted", "Count the vowels in 'banana'", "Count the vowels in 'pineapple'"),
    (
        "units",
        "How long does it take to walk 5 km?",
        "How long does it take to walk 5 miles?",
    ),
    (
        "language",
        "Translate 'good morning' into French",
        "Translate 'good morning' into Spanish",
    ),
]


@pytest.mark.parametrize(("reason", "cached", "new"), CONTRASTS, ids=[c[0] for c in CONTRASTS])
async def test_the_precision_guard_refuses_a_minimal_contrast(
    keel_home: Path,
    fake_openai: FakeOpenAI,
    fake_openai_url: str,
    reason: str,
    cached: str,
    new: str,
) -> None:
    settings = semantic_settings(keel_home, fake_openai_url, {"semantic_threshold": 0.5})
    first, second = await ask_twice(settings, cached, new)
    assert first.headers["x-keel-cache"] == "miss"
    assert "x-keel-cache-guard" not in first.headers
    assert second.headers["x-keel-cache"] == "miss"
    assert second.headers["x-keel-cache-guard"] == reason
    assert second.json()["choices"][0]["message"]["content"] == f"Echo: {new}"
    assert fake_openai.count("gpt-4o-mini") == 2


async def test_over_and_under_are_different_questions_at_the_default_threshold(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    # The reported case: the two prompts embed at a cosine above 0.99.
    settings = semantic_settings(keel_home, fake_openai_url, {})
    over = "Summarize the refund policy for orders over $100"
    under = "Summarize the refund policy for orders under $100"
    _, second = await ask_twice(settings, over, under)
    assert second.headers["x-keel-cache"] == "miss"
    assert second.headers["x-keel-cache-guard"] == "antonyms"
    assert second.json()["choices"][0]["message"]["content"] == f"Echo: {under}"


PARAPHRASES = [
    ("How do I reset my password?", "How can I reset my password?"),
    (
        "Summarize the refund policy for orders under $100",
        "Summarize the refund policy for orders below $100",
    ),
    ("Give me 3 tips for better sleep", "Give me three tips for better sleep"),
    ("I can't log in to my account", "I cannot log in to my account"),
]


@pytest.mark.parametrize(("cached", "new"), PARAPHRASES)
async def test_paraphrases_still_hit_with_the_guard_on(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str, cached: str, new: str
) -> None:
    settings = semantic_settings(keel_home, fake_openai_url, {})
    _, second = await ask_twice(settings, cached, new)
    assert second.headers["x-keel-cache"] == "hit"
    assert "x-keel-cache-guard" not in second.headers
    assert second.json()["choices"][0]["message"]["content"] == f"Echo: {cached}"
    assert fake_openai.count("gpt-4o-mini") == 1


async def test_a_group_with_the_guard_off_serves_what_the_embedding_matches(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    settings = semantic_settings(keel_home, fake_openai_url, {"semantic_guard": "off"})
    over = "Summarize the refund policy for orders over $100"
    _, second = await ask_twice(settings, over, "Summarize the refund policy for orders under $100")
    assert second.headers["x-keel-cache"] == "hit"
    assert second.json()["choices"][0]["message"]["content"] == f"Echo: {over}"


@pytest.mark.parametrize(("verdict", "served"), [("no", False), ("Yes.", True)])
async def test_the_verify_level_asks_the_judge_model_in_the_band(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str, verdict: str, served: bool
) -> None:
    fake_openai.faults["judge-model"] = Reply(content=verdict)
    # The two prompts embed at about 0.99: inside the band [0.97, 0.97 + 0.03).
    settings = semantic_settings(
        keel_home,
        fake_openai_url,
        {"semantic_threshold": 0.97, "semantic_guard": "verify"},
        verify_model="judge",
    )
    cached, new = "How do I reset my password?", "How can I reset my password?"
    _, second = await ask_twice(settings, cached, new)
    [judged] = [r.body for r in fake_openai.requests if r.body.get("model") == "judge-model"]
    asked = json.dumps(judged["messages"])
    assert cached in asked and new in asked
    if served:
        assert second.headers["x-keel-cache"] == "hit"
        assert fake_openai.count("gpt-4o-mini") == 1
    else:
        assert second.headers["x-keel-cache"] == "miss"
        assert second.headers["x-keel-cache-guard"] == "verifier"
        assert fake_openai.count("gpt-4o-mini") == 2


async def test_a_lexical_refusal_never_reaches_the_judge(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    fake_openai.faults["judge-model"] = Reply(content="yes")
    # About 0.995 similar: inside the band at 0.97, but the guard refuses it first.
    settings = semantic_settings(
        keel_home,
        fake_openai_url,
        {"semantic_threshold": 0.97, "semantic_guard": "verify"},
        verify_model="judge",
    )
    _, second = await ask_twice(
        settings,
        "Summarize the refund policy for orders over $100",
        "Summarize the refund policy for orders under $100",
    )
    assert second.headers["x-keel-cache-guard"] == "antonyms"
    assert fake_openai.count("judge-model") == 0


async def test_above_the_band_the_judge_is_not_asked(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    fake_openai.faults["judge-model"] = Reply(content="no")
    # About 0.99 similar, threshold 0.95, band 0.03: clear of the band.
    settings = semantic_settings(
        keel_home,
        fake_openai_url,
        {"semantic_guard": "verify"},
        verify_model="judge",
        verify_band=0.03,
    )
    _, second = await ask_twice(
        settings, "How do I reset my password?", "How can I reset my password?"
    )
    assert second.headers["x-keel-cache"] == "hit"
    assert fake_openai.count("judge-model") == 0


async def test_the_verify_level_needs_a_judge_model(keel_home: Path, fake_openai_url: str) -> None:
    from keel.errors import ConfigError

    settings = semantic_settings(keel_home, fake_openai_url, {"semantic_guard": "verify"})
    with pytest.raises(ConfigError, match="verify_model"):
        async with running_app(settings):
            pass


async def test_the_cache_figures_count_each_refusal_by_reason(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    settings = semantic_settings(keel_home, fake_openai_url, {})
    over = "Summarize the refund policy for orders over $100"
    under = "Summarize the refund policy for orders under $100"
    async with running_app(settings) as (app, client):
        await client.post("/v1/chat/completions", json=ask(over, temperature=0))
        await app.state.keel.gateway.caching.flush()
        await client.post("/v1/chat/completions", json=ask(under, temperature=0))
        await client.post("/v1/chat/completions", json=ask(over, temperature=0))  # exact hit
        stats = (await client.get("/v1/keel/cache")).json()
    assert stats["enabled"] is True
    assert stats["semantic"]["refused"] == {"antonyms": 1}
    assert stats["exact"]["memory_hits"] == 1
    assert stats["exact"]["stores"] >= 1
