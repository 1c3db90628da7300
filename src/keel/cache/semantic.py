"""The semantic cache: a cached answer for a question asked in other words.

What is compared: the embedding of the request's last message, when that is plain user text
(see `keel.cache.keys`), against the entries of the same scope, one scope per model group and
caller. Everything else in the request must match exactly (its hash is stored with each entry).
A hit needs cosine similarity >= the threshold (0.95 by default; per lookup if given), and then
the precision guard's agreement (`keel.cache.precision`): at level `lexical` (the default) the two
prompt texts must not differ in a number, a negation, a direction, a name, a date, a code
identifier, a quoted string, a unit or a target language; at level `verify` a judge model must
also say yes to a candidate whose similarity is within `verify_band` above the threshold. A
refused candidate gives way to the next most similar one (up to `_CANDIDATES`); the reason of the
first refusal is returned with the miss and counted in `SemanticStats.refused`.

Each scope is a float32 matrix of normalized vectors held in process, searched with one
matrix-vector product (about a millisecond at 10,000 entries of 384 dimensions). Entries are
also appended to the second tier's per-scope log; a replica reads that log from its own cursor
when a scope is first used and then at most every `sync_interval_s`, so entries stored by other
replicas (or before a restart) become visible without any replica re-reading the whole log.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from numpy.typing import NDArray

from keel.cache.exact import storable
from keel.cache.keys import semantic_prompt
from keel.cache.precision import GUARD_LEVELS, GuardLevel, Verifier, contrast
from keel.cache.tier import Clock, SecondTier, StoredVector, WriteBehind, warn_tier_failure
from keel.schemas import ChatCompletionRequest, EmbeddingRequest

if TYPE_CHECKING:
    from keel.providers import Provider

__all__ = ["EmbedFn", "SemanticCache", "SemanticMatch", "SemanticStats", "provider_embedder"]

EmbedFn = Callable[[list[str]], Awaitable[NDArray[Any]]]
Vector = NDArray[np.float32]
_EMBEDDING_MEMO = 1024
# Candidates above the threshold the guard looks at, most similar first, before giving up.
_CANDIDATES = 4


@dataclass(slots=True)
class SemanticStats:
    hits: int = 0
    misses: int = 0
    stores: int = 0
    ineligible: int = 0  # requests whose last message is not plain user text
    # Misses where a candidate was similar enough but the guard refused it, by reason.
    refused: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SemanticMatch:
    """A lookup's outcome: the response served, or None; and when the guard refused a similar
    enough candidate, why (a `keel.cache.precision.REASONS` value, or "verifier")."""

    response: dict[str, Any] | None
    refusal: str | None = None
    similarity: float | None = None


class _ScopeIndex:
    """One scope's entries, in insertion order, in preallocated arrays grown by doubling."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.count = 0
        self.vectors: Vector | None = None
        self.contexts = np.empty(0, dtype=np.int64)
        self.expires = np.empty(0, dtype=np.float64)
        self.responses: list[bytes] = []
        self.prompts: list[str] = []
        self.ids: list[str] = []
        self.known: set[str] = set()
        self.cursor: str | None = None
        self.synced_at = -math.inf
        self.lock = asyncio.Lock()

    def add(self, record: StoredVector, vector: Vector, now: float) -> None:
        if record.entry_id in self.known:
            return
        if self.vectors is None:
            self._resize(min(64, self.max_entries), vector.shape[0])
        assert self.vectors is not None
        if vector.shape[0] != self.vectors.shape[1]:
            # Written by a replica with another embedding model; it cannot be compared.
            return
        if self.count == self.max_entries:
            self._make_room(now)
        if self.count == self.vectors.shape[0]:
            self._resize(min(2 * self.count, self.max_entries), self.vectors.shape[1])
        row = self.count
        self.vectors[row] = vector
        self.contexts[row] = record.context
        self.expires[row] = record.expires_at
        self.responses.append(record.response)
        self.prompts.append(record.prompt)
        self.ids.append(record.entry_id)
        self.known.add(record.entry_id)
        self.count += 1

    def search(
        self, query: Vector, context: int, now: float, threshold: float
    ) -> list[tuple[float, int]]:
        """(similarity, row) of the best entries at or above `threshold`, best first."""
        if self.vectors is None or self.count == 0 or query.shape[0] != self.vectors.shape[1]:
            return []
        count = self.count
        scores = self.vectors[:count] @ query
        scores[(self.contexts[:count] != context) | (self.expires[:count] <= now)] = -2.0
        if count > _CANDIDATES:
            top = np.argpartition(scores, count - _CANDIDATES)[count - _CANDIDATES :]
        else:
            top = np.arange(count)
        ranked = sorted(((float(scores[row]), int(row)) for row in top), reverse=True)
        return [(score, row) for score, row in ranked if score >= threshold]

    def _resize(self, capacity: int, dimension: int) -> None:
        vectors = np.zeros((capacity, dimension), dtype=np.float32)
        contexts = np.zeros(capacity, dtype=np.int64)
        expires = np.zeros(capacity, dtype=np.float64)
        if self.vectors is not None:
            vectors[: self.count] = self.vectors[: self.count]
            contexts[: self.count] = self.contexts[: self.count]
            expires[: self.count] = self.expires[: self.count]
        self.vectors, self.contexts, self.expires = vectors, contexts, expires

    def _make_room(self, now: float) -> None:
        # Expired entries go first; failing that the oldest tenth, so a full scope compacts
        # once per many inserts rather than on every one.
        assert self.vectors is not None
        count = self.count
        keep = self.expires[:count] > now
        if keep.all():
            keep[: max(1, count // 10)] = False
        kept = int(keep.sum())
        self.vectors[:kept] = self.vectors[:count][keep]
        self.contexts[:kept] = self.contexts[:count][keep]
        self.expires[:kept] = self.expires[:count][keep]
        self.responses = [item for item, flag in zip(self.responses, keep, strict=True) if flag]
        self.prompts = [item for item, flag in zip(self.prompts, keep, strict=True) if flag]
        self.ids = [item for item, flag in zip(self.ids, keep, strict=True) if flag]
        self.known = set(self.ids)
        self.count = kept


def _normalized(vector: NDArray[Any]) -> Vector:
    flat = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(flat))
    return flat / norm if norm > 0 else flat


class SemanticCache:
    def __init__(
        self,
        embed: EmbedFn,
        *,
        second_tier: SecondTier | None = None,
        threshold: float = 0.95,
        default_ttl_s: float = 3600,
        max_entries_per_scope: int = 10_000,
        max_scopes: int = 1000,
        sync_interval_s: float = 1.0,
        clock: Clock = time.time,
        max_pending_writes: int = 1000,
        guard: GuardLevel = "lexical",
        verifier: Verifier | None = None,
        verify_band: float = 0.03,
    ) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise ValueError("threshold is a cosine similarity, between -1 and 1")
        if guard not in GUARD_LEVELS:
            raise ValueError(f"guard must be one of {', '.join(GUARD_LEVELS)}")
        if verify_band < 0:
            raise ValueError("verify_band must be >= 0")
        if default_ttl_s <= 0 or max_entries_per_scope < 1 or max_scopes < 1:
            raise ValueError("default_ttl_s, max_entries_per_scope and max_scopes must be > 0")
        self.threshold = threshold
        self.guard: GuardLevel = guard
        self.verifier = verifier
        self.verify_band = verify_band
        self.default_ttl_s = default_ttl_s
        self.second_tier = second_tier
        self.stats = SemanticStats()
        self._embed = embed
        self._max_entries = max_entries_per_scope
        self._max_scopes = max_scopes
        self._sync_interval_s = sync_interval_s
        self._clock = clock
        self._indexes: OrderedDict[str, _ScopeIndex] = OrderedDict()
        self._embeddings: OrderedDict[str, Vector] = OrderedDict()
        self._writes = WriteBehind(second_tier.name if second_tier else "none", max_pending_writes)

    async def lookup(
        self,
        model_group: str,
        request: ChatCompletionRequest,
        *,
        scope: str | None = None,
        threshold: float | None = None,
        guard: GuardLevel | None = None,
    ) -> dict[str, Any] | None:
        """A cached response for a similar enough request, as a fresh dict, or None."""
        found = await self.match(
            model_group, request, scope=scope, threshold=threshold, guard=guard
        )
        return found.response

    async def match(
        self,
        model_group: str,
        request: ChatCompletionRequest,
        *,
        scope: str | None = None,
        threshold: float | None = None,
        guard: GuardLevel | None = None,
    ) -> SemanticMatch:
        """Like `lookup`, and says why a similar enough candidate was refused. `threshold` and
        `guard` override the cache's own for this lookup (a model group's settings)."""
        prompt = semantic_prompt(model_group, request)
        if prompt is None:
            self.stats.ineligible += 1
            return SemanticMatch(None)
        query = await self._embedding_or_none(prompt.text)
        if query is None:
            self.stats.misses += 1
            return SemanticMatch(None)
        index = await self._index(model_group, scope)
        limit = self.threshold if threshold is None else threshold
        level = self.guard if guard is None else guard
        refusal: str | None = None
        for similarity, row in index.search(query, prompt.context, self._clock(), limit):
            if level != "off":
                why = await self._refusal(
                    index.prompts[row], prompt.text, similarity - limit, level
                )
                if why is not None:
                    refusal = refusal or why
                    continue
            self.stats.hits += 1
            response: dict[str, Any] = orjson.loads(index.responses[row])
            return SemanticMatch(response, similarity=similarity)
        self.stats.misses += 1
        if refusal is not None:
            self.stats.refused[refusal] = self.stats.refused.get(refusal, 0) + 1
        return SemanticMatch(None, refusal=refusal)

    async def _refusal(self, cached: str, new: str, margin: float, level: GuardLevel) -> str | None:
        if not cached:
            # Written by a replica without the guard: there is nothing to check it against.
            return "unverifiable"
        reason = contrast(cached, new)
        if reason is not None or level != "verify" or margin >= self.verify_band:
            return reason
        if self.verifier is None or cached == new:
            return None
        try:
            same = await self.verifier(cached, new)
        except Exception as exc:
            # A judge that is down must not turn the band into hits; it costs misses instead.
            warn_tier_failure("verifier", "verify", exc)
            return "verifier"
        return None if same else "verifier"

    async def store(
        self,
        model_group: str,
        request: ChatCompletionRequest,
        response: dict[str, Any],
        *,
        scope: str | None = None,
        ttl_s: float | None = None,
    ) -> bool:
        """Keep `response` for requests similar to `request`. False when nothing was stored:
        the request is not eligible, or the completion did not finish."""
        prompt = semantic_prompt(model_group, request)
        if prompt is None or not storable(response):
            return False
        ttl = self.default_ttl_s if ttl_s is None else ttl_s
        if ttl <= 0:
            raise ValueError("ttl_s must be positive")
        vector = await self._embedding_or_none(prompt.text)
        if vector is None:
            return False
        index = await self._index(model_group, scope)
        now = self._clock()
        record = StoredVector(
            entry_id=uuid.uuid4().hex,
            context=prompt.context,
            vector=vector.astype("<f4").tobytes(),
            response=orjson.dumps(response),
            expires_at=now + ttl,
            prompt=prompt.text,
        )
        index.add(record, vector, now)
        self.stats.stores += 1
        tier = self.second_tier
        if tier is not None:
            scope_id = _scope_id(model_group, scope)
            self._writes.submit("vector write", lambda: tier.append_vector(scope_id, record, ttl))
        return True

    async def embedding(self, text: str) -> Vector:
        """The normalized embedding of `text`. A store right after its lookup's miss reuses the
        lookup's embedding instead of running the model twice."""
        vector = self._embeddings.get(text)
        if vector is not None:
            self._embeddings.move_to_end(text)
            return vector
        vector = _normalized((await self._embed([text]))[0])
        self._embeddings[text] = vector
        if len(self._embeddings) > _EMBEDDING_MEMO:
            self._embeddings.popitem(last=False)
        return vector

    async def _embedding_or_none(self, text: str) -> Vector | None:
        # The embedding model is a dependency like a tier: when it fails, the request goes on
        # without the semantic cache.
        try:
            return await self.embedding(text)
        except Exception as exc:
            warn_tier_failure("embedding", "embed", exc)
            return None

    async def _index(self, model_group: str, scope: str | None) -> _ScopeIndex:
        scope_id = _scope_id(model_group, scope)
        index = self._indexes.get(scope_id)
        if index is None:
            index = self._indexes[scope_id] = _ScopeIndex(self._max_entries)
            if len(self._indexes) > self._max_scopes:
                # The scope used least recently goes; it is reloaded from the tier if it returns.
                self._indexes.popitem(last=False)
        else:
            self._indexes.move_to_end(scope_id)
        if self.second_tier is not None and self._stale(index):
            async with index.lock:
                if self._stale(index):
                    await self._sync(scope_id, index, self.second_tier)
        return index

    def _stale(self, index: _ScopeIndex) -> bool:
        return time.monotonic() - index.synced_at >= self._sync_interval_s

    async def _sync(self, scope_id: str, index: _ScopeIndex, tier: SecondTier) -> None:
        now = self._clock()
        try:
            records, cursor = await tier.read_vectors(scope_id, index.cursor, now)
        except Exception as exc:
            warn_tier_failure(tier.name, "vector read", exc)
        else:
            for record in records:
                index.add(record, np.frombuffer(record.vector, dtype="<f4"), now)
            index.cursor = cursor
        # Also after a failure: a tier that is down is retried once per interval, not per call.
        index.synced_at = time.monotonic()

    async def flush(self) -> None:
        """Wait until every store so far has reached the second tier (or failed)."""
        await self._writes.flush()

    async def close(self) -> None:
        """Flush, then close the second tier."""
        await self.flush()
        if self.second_tier is not None:
            await self.second_tier.close()


def _scope_id(model_group: str, scope: str | None) -> str:
    return hashlib.sha256(f"{model_group}\0{scope or ''}".encode()).hexdigest()[:32]


def provider_embedder(provider: Provider, model: str) -> EmbedFn:
    """An `EmbedFn` backed by a Keel embedding provider (the bundled all-MiniLM-L6-v2, or any
    other). Vectors are requested as base64, which skips a list of floats per text."""

    async def embed(texts: list[str]) -> NDArray[Any]:
        request = EmbeddingRequest(model=model, input=texts, encoding_format="base64")
        response = await provider.embed(request)
        rows = sorted(response["data"], key=lambda item: item["index"])
        return np.stack(
            [
                np.frombuffer(base64.b64decode(row["embedding"]), dtype="<f4")
                if isinstance(row["embedding"], str)
                else np.asarray(row["embedding"], dtype=np.float32)
                for row in rows
            ]
        )

    return embed
