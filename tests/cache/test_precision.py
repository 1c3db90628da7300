"""The precision guard: what each contrast class refuses, what paraphrases it lets through, and
the default configuration measured on the labelled evaluation set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from keel.cache import SemanticCache, contrast, judge_verifier, provider_embedder
from keel.cache.keys import semantic_prompt
from keel.cache.tier import StoredVector
from keel.config import DeploymentConfig
from keel.providers.local_embeddings import SentenceTransformersProvider
from tests.cache.helpers import FakeClock, FakeEmbedder, chat, completion

PAIRS = Path(__file__).resolve().parent.parent / "data" / "semantic_pairs.jsonl"


@pytest.mark.parametrize(
    ("cached", "new", "reason"),
    [
        ("Is 17 a prime number?", "Is 21 a prime number?", "numbers"),
        ("Give me three tips", "Give me seven tips", "numbers"),
        ("Show me sales for 2023", "Show me sales for 2022", "dates"),
        ("Is the office open on Monday?", "Is the office open on Saturday?", "dates"),
        ("Which foods contain gluten?", "Which foods do not contain gluten?", "negation"),
        ("Why does my code compile?", "Why doesn't my code compile?", "negation"),
        ("Which employees are eligible?", "Which employees are ineligible?", "negation"),
        ("Orders over $100", "Orders under $100", "antonyms"),
        ("Sort the list in ascending order", "Sort the list in descending order", "antonyms"),
        ("Convert Celsius to Fahrenheit", "Convert Fahrenheit to Celsius", "antonyms"),
        ("What is the capital of France?", "What is the capital of Germany?", "entities"),
        ("Fix the bug in get_user_by_id", "Fix the bug in get_user_by_email", "code"),
        ("Why does it raise KeyError?", "Why does it raise IndexError?", "code"),
        ("What does `git rebase` do?", "What does `git merge` do?", "code"),
        ("Count the vowels in 'banana'", "Count the vowels in 'pineapple'", "quoted"),
        ("Fix the grammar: she go home", "Fix the grammar: they goes home", "quoted"),
        ("Convert 5 km to miles", "Convert 5 km to feet", "units"),
        ("Translate 'hello' into French", "Translate 'hello' into Spanish", "language"),
        ("Write a Python function to add", "Write a Rust function to add", "language"),
    ],
)
def test_each_contrast_class_is_refused_with_its_reason(cached: str, new: str, reason: str) -> None:
    assert contrast(cached, new) == reason
    assert contrast(new, cached) == reason


@pytest.mark.parametrize(
    ("cached", "new"),
    [
        ("How do I reset my password?", "How can I reset my password?"),
        ("Orders under $100", "Orders below $100"),
        ("Find customers with more than 10 orders", "Find customers with over 10 orders"),
        ("Give me 3 tips", "Give me three tips"),
        ("Calculate 15% of 200", "Calculate 15 percent of 200"),
        ("Convert 5 kilometers to miles", "Convert 5 km to miles"),
        ("Convert 100 degrees Fahrenheit to Celsius", "Convert 100 °F to Celsius"),
        ("Don't include personal data", "Do not include personal data"),
        ("What is the capital of Japan?", "What is Japan's capital?"),
        ("When did World War II end?", "When did the Second World War end?"),
        ("Write a Python function", "write a python function"),
        ("List orders after January 5, 2024", "List orders after Jan 5, 2024"),
        ("Explain `let` in JavaScript", "Explain `let` in JS"),
    ],
)
def test_paraphrases_pass(cached: str, new: str) -> None:
    assert contrast(cached, new) is None


async def test_a_refused_candidate_gives_way_to_the_next_most_similar(clock: FakeClock) -> None:
    embedder = FakeEmbedder()
    asked = "Summarize the refund policy for orders under $100"
    over = "Summarize the refund policy for orders over $100"
    below = "Summarize the refund policy for orders below $100"
    embedder.near(over, asked, 0.99)
    embedder.near(below, asked, 0.97)
    cache = SemanticCache(embedder, clock=clock)
    await cache.store("g", chat(over), completion("Over: 30 days."))
    await cache.store("g", chat(below), completion("Under: 14 days."))
    found = await cache.match("g", chat(asked))
    assert found.response == completion("Under: 14 days.")
    assert found.refusal is None


async def test_entries_without_their_prompt_are_served_only_with_the_guard_off(
    clock: FakeClock,
) -> None:
    # As a replica that predates the guard writes them to the second tier.
    embedder = FakeEmbedder()
    cache = SemanticCache(embedder, clock=clock)
    index = await cache._index("g", None)
    question = "What is the capital of France?"
    vector = (await embedder([question]))[0]
    prompt = semantic_prompt("g", chat(question))
    assert prompt is not None
    record = StoredVector("old", prompt.context, vector.tobytes(), orjson.dumps(completion()), 1e12)
    index.add(record, vector, clock())
    assert (await cache.match("g", chat(question))).refusal == "unverifiable"
    assert await cache.lookup("g", chat(question), guard="off") == completion()


async def test_the_judge_reads_only_a_leading_yes() -> None:
    answers = iter(["Yes, they ask the same thing.", "no", "I think yes", ""])
    seen: list[list[dict[str, object]]] = []

    async def chat_model(model: str, messages: list[dict[str, object]]) -> str:
        seen.append(messages)
        return next(answers)

    verify = judge_verifier(chat_model, "judge")
    assert [await verify("a", "b") for _ in range(4)] == [True, False, False, False]
    assert "Request A: a" in str(seen[0][-1]["content"])


async def test_a_failing_judge_means_a_miss(clock: FakeClock) -> None:
    embedder = FakeEmbedder()
    embedder.near("How can I reset my password?", "How do I reset my password?", 0.96)

    async def broken(cached: str, new: str) -> bool:
        raise RuntimeError("judge unavailable")

    cache = SemanticCache(embedder, clock=clock, guard="verify", verifier=broken)
    await cache.store("g", chat("How do I reset my password?"), completion())
    found = await cache.match("g", chat("How can I reset my password?"))
    assert (found.response, found.refusal) == (None, "verifier")
    assert cache.stats.refused == {"verifier": 1}


async def test_the_default_meets_the_false_hit_target_on_the_evaluation_set() -> None:
    """The acceptance bar on tests/data/semantic_pairs.jsonl with the bundled embedding model:
    at the default threshold and guard, at most 0.5% of contrast pairs are served, and at least
    80% of the paraphrases the unguarded cache serves are still served."""
    pairs = [orjson.loads(line) for line in PAIRS.read_bytes().splitlines() if line.strip()]
    assert len(pairs) >= 300
    assert {pair["label"] for pair in pairs} == {"hit", "miss"}
    config = DeploymentConfig(
        id="all-minilm-l6-v2", provider="sentence_transformers", kind="embedding"
    )
    provider = SentenceTransformersProvider(config, http=None)  # type: ignore[arg-type]
    await provider.start()
    try:
        texts = sorted({text for pair in pairs for text in (pair["cached"], pair["new"])})
        vectors = dict(zip(texts, await provider_embedder(provider, config.id)(texts), strict=True))
    finally:
        await provider.aclose()

    async def embed(batch: list[str]) -> np.typing.NDArray[np.float32]:
        return np.stack([vectors[text] for text in batch])

    served: dict[str, list[tuple[str, bool]]] = {"off": [], "lexical": []}
    for guard in served:
        cache = SemanticCache(embed, guard=guard)  # type: ignore[arg-type]
        for number, pair in enumerate(pairs):
            scope = str(number)
            await cache.store("g", chat(pair["cached"]), completion(), scope=scope)
            found = await cache.lookup("g", chat(pair["new"]), scope=scope)
            served[guard].append((pair["label"], found is not None))
    contrasts = sum(1 for pair in pairs if pair["label"] == "miss")
    false_hits = sum(1 for label, hit in served["lexical"] if label == "miss" and hit)
    unguarded = sum(1 for label, hit in served["off"] if label == "hit" and hit)
    guarded = sum(1 for label, hit in served["lexical"] if label == "hit" and hit)
    assert false_hits / contrasts <= 0.005
    assert guarded >= 0.8 * unguarded
