"""Precision of the semantic cache: how often it would serve the answer to a different question,
and how many true paraphrases it still answers, per threshold and guard level.

The pairs are tests/data/semantic_pairs.jsonl (written by bench/semantic_guard_pairs.py): a
cached prompt, a new prompt, and whether the cached answer is right for the new one. Every prompt
is embedded with the bundled all-MiniLM-L6-v2 through Keel's own sentence-transformers provider.
Then, per threshold and guard level, each pair goes through a real `SemanticCache` (a scope of its
own): the cached prompt is stored, the new one looked up, and the lookup (search + guard, the
embedding excluded: it is the same with or without the guard) is timed.

- false hits: contrast pairs (`miss`) that were served, over all contrast pairs;
- paraphrase hits: paraphrase pairs (`hit`) that were served, over all paraphrase pairs;
- kept: paraphrase hits with the guard over paraphrase hits without it, same threshold;
- p50 / p99 ms: the lookup; `+p50`: the guard's median cost (guard minus off, paired).

Figures are given for all pairs, and for the held-out part alone (pairs the guard was not tuned
on). With `--judge`, the `verify` level is measured too, with the bundled SmolLM2-135M as the
judge (a weak judge, loaded in process; its latency is what a small local model costs on CPU).

    python bench/semantic_cache_precision.py
    python bench/semantic_cache_precision.py --judge
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from keel.cache import GuardLevel, SemanticCache, Verifier, judge_verifier, provider_embedder
from keel.cache.precision import facts
from keel.config import DeploymentConfig
from keel.providers.local_embeddings import SentenceTransformersProvider
from keel.schemas import ChatCompletionRequest

PAIRS = Path(__file__).resolve().parent.parent / "tests" / "data" / "semantic_pairs.jsonl"
THRESHOLDS = (0.90, 0.93, 0.95, 0.97)
TARGET_FALSE_HIT_RATE = 0.005
TARGET_KEPT = 0.80
JUDGE_CALLS: list[float] = []  # seconds per judge call, for the verify rows


@dataclass
class Outcome:
    served: bool
    refusal: str | None
    seconds: float


def _request(text: str) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": text}], "temperature": 0}
    )


def _answer(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
    }


async def _embeddings(texts: list[str]) -> dict[str, NDArray[np.float32]]:
    config = DeploymentConfig(
        id="all-minilm-l6-v2", provider="sentence_transformers", kind="embedding"
    )
    provider = SentenceTransformersProvider(config, http=None)  # type: ignore[arg-type]
    await provider.start()
    embed = provider_embedder(provider, config.id)
    vectors = await embed(texts)
    await provider.aclose()
    return {
        text: np.asarray(vector, dtype=np.float32)
        for text, vector in zip(texts, vectors, strict=True)
    }


async def _run(
    pairs: list[dict[str, str]],
    vectors: dict[str, NDArray[np.float32]],
    threshold: float,
    guard: GuardLevel,
    verifier: Verifier | None,
) -> list[Outcome]:
    async def embed(texts: list[str]) -> NDArray[Any]:
        return np.stack([vectors[text] for text in texts])

    cache = SemanticCache(embed, threshold=threshold, guard=guard, verifier=verifier)
    outcomes = []
    for number, pair in enumerate(pairs):
        scope = f"pair-{number}"
        await cache.store("m", _request(pair["cached"]), _answer("cached"), scope=scope)
        new = _request(pair["new"])
        await cache.embedding(pair["new"])  # embedded once, outside the timing
        facts.cache_clear()  # both prompts analysed afresh: the guard's cost when cold
        started = time.perf_counter()
        found = await cache.match("m", new, scope=scope)
        outcomes.append(
            Outcome(found.response is not None, found.refusal, time.perf_counter() - started)
        )
    return outcomes


def _rates(
    pairs: list[dict[str, str]], outcomes: list[Outcome], split: str | None
) -> tuple[float, float, int]:
    chosen = [
        (pair, outcome)
        for pair, outcome in zip(pairs, outcomes, strict=True)
        if split is None or pair["split"] == split
    ]
    contrasts = [outcome.served for pair, outcome in chosen if pair["label"] == "miss"]
    paraphrases = [outcome.served for pair, outcome in chosen if pair["label"] == "hit"]
    return (
        sum(contrasts) / len(contrasts),
        sum(paraphrases) / len(paraphrases),
        sum(paraphrases),
    )


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def _bundled_judge() -> Verifier:
    from keel.providers._bundled import BUNDLED_CHAT_MODEL_ID
    from keel.providers.local_llama import LlamaCppProvider

    config = DeploymentConfig(id=BUNDLED_CHAT_MODEL_ID, provider="llama_cpp")
    provider = LlamaCppProvider(config, http=None)  # type: ignore[arg-type]
    await provider.start()  # loaded before anything is timed

    async def chat(model: str, messages: list[dict[str, Any]]) -> str:
        request = ChatCompletionRequest.model_validate(
            {"model": model, "messages": messages, "temperature": 0, "max_tokens": 4}
        )
        response = await provider.chat(request)
        content = response["choices"][0]["message"].get("content")
        return content if isinstance(content, str) else ""

    judge = judge_verifier(chat, BUNDLED_CHAT_MODEL_ID)

    async def timed(cached: str, new: str) -> bool:
        started = time.perf_counter()
        try:
            return await judge(cached, new)
        finally:
            JUDGE_CALLS.append(time.perf_counter() - started)

    return timed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--judge", action="store_true", help="also measure guard=verify")
    parser.add_argument("--repeat", type=int, default=5, help="timing passes per setting")
    args = parser.parse_args()

    pairs = [orjson.loads(line) for line in PAIRS.read_bytes().splitlines() if line.strip()]
    texts = sorted({text for pair in pairs for text in (pair["cached"], pair["new"])})
    vectors = await _embeddings(texts)
    counts = {
        split: (
            sum(1 for p in pairs if p["label"] == "hit" and (split is None or p["split"] == split)),
            sum(
                1 for p in pairs if p["label"] == "miss" and (split is None or p["split"] == split)
            ),
        )
        for split in (None, "heldout")
    }
    print(
        f"{len(pairs)} pairs: {counts[None][0]} paraphrases, {counts[None][1]} contrasts"
        f" (held out: {counts['heldout'][0]} and {counts['heldout'][1]})"
    )
    guards: list[GuardLevel] = ["off", "lexical"] + (["verify"] if args.judge else [])
    judge = await _bundled_judge() if args.judge else None

    header = (
        f"{'threshold':>9} {'guard':>8} | {'false hits':>10} {'para hits':>9} {'kept':>5}"
        f" | held out: {'false':>6} {'para':>5} {'kept':>5} | {'p50 ms':>7} {'p99 ms':>7}"
        f" {'+p50 ms':>8}"
    )
    print(header)
    print("-" * len(header))
    verdicts = []
    for threshold in THRESHOLDS:
        baseline: dict[str | None, int] = {}
        baseline_times: list[float] = []
        for guard in guards:
            passes = 1 if guard == "verify" else args.repeat
            runs = [
                await _run(pairs, vectors, threshold, guard, judge if guard == "verify" else None)
                for _ in range(passes)
            ]
            outcomes = runs[0]
            times = [min(run[i].seconds for run in runs) for i in range(len(pairs))]
            false_all, para_all, hits_all = _rates(pairs, outcomes, None)
            false_held, para_held, hits_held = _rates(pairs, outcomes, "heldout")
            if guard == "off":
                baseline = {None: hits_all, "heldout": hits_held}
                baseline_times = times
            kept_all = hits_all / baseline[None] if baseline[None] else 1.0
            kept_held = hits_held / baseline["heldout"] if baseline["heldout"] else 1.0
            added = statistics.median(
                after - before for after, before in zip(times, baseline_times, strict=True)
            )
            print(
                f"{threshold:>9.2f} {guard:>8} | {false_all:>10.1%} {para_all:>9.1%}"
                f" {kept_all:>5.0%} | {'':>10}{false_held:>6.1%} {para_held:>5.0%}"
                f" {kept_held:>5.0%} | {_percentile(times, 0.5) * 1000:>7.3f}"
                f" {_percentile(times, 0.99) * 1000:>7.3f} {added * 1000:>8.3f}"
            )
            if guard == "verify" and JUDGE_CALLS:
                print(
                    f"{'':>20}judge asked {len(JUDGE_CALLS)} times: per call p50"
                    f" {_percentile(JUDGE_CALLS, 0.5) * 1000:.0f} ms,"
                    f" p99 {_percentile(JUDGE_CALLS, 0.99) * 1000:.0f} ms"
                )
                JUDGE_CALLS.clear()
            if threshold == 0.95 and guard == "lexical":
                verdicts.append((false_all, kept_all, added))
            if guard == "lexical":
                for pair, outcome in zip(pairs, outcomes, strict=True):
                    if outcome.served and pair["label"] == "miss":
                        print(
                            f"{'':>20}served: {pair['kind']}: {pair['cached']!r} -> {pair['new']!r}"
                        )
    false_hits, kept, added = verdicts[0]
    print(
        f"\ndefault (0.95, lexical): false hits {false_hits:.2%} (target <= "
        f"{TARGET_FALSE_HIT_RATE:.1%}), paraphrase hits kept {kept:.0%} (target >= "
        f"{TARGET_KEPT:.0%}), guard +{added * 1000:.3f} ms p50 (target <= 1 ms): "
        + (
            "PASS"
            if false_hits <= TARGET_FALSE_HIT_RATE and kept >= TARGET_KEPT and added <= 0.001
            else "FAIL"
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
