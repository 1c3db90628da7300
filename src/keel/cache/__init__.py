"""Keel's response cache: the same answer again without paying the provider twice.

Which requests are cached (`is_cacheable`): a chat completion whose temperature is set to 0
explicitly; one that opts in with a ttl (`"cache": {"ttl": 60}` or `x-keel-cache: ttl=60`); and
every request of a model group configured with `always`. Streams and n > 1 are cached like the
rest: a stream is stored as the completion it assembles to, and a hit is replayed as a stream.
A request may still skip the lookup (`no-cache`) or the store (`no-store`).

Exact cache (`ResponseCache`): keyed on the model group, the caller scope, the messages and the
parameters that affect output (`cache_key`). An in-process LRU answers first; on a miss, a
second tier: Redis when a URL is configured (shared by replicas), otherwise a SQLite file of the
cache's own. Stores reach the second tier in the background; `flush()` waits for them.

Semantic cache (`SemanticCache`, off unless built with an embedding function): answers a
request whose last user message is close enough in meaning (cosine >= 0.95 by default) to one
already answered, in the same model group and caller scope, with everything else identical,
and that the precision guard (`keel.cache.precision`) finds in agreement with it: no differing
number, negation, direction, name, date, identifier, quoted string, unit or target language.
"""

from keel.cache.control import (
    CONTROL_HEADER,
    MAX_TTL_S,
    CacheControl,
    cache_control,
    is_cacheable,
)
from keel.cache.exact import CacheStats, ResponseCache, storable
from keel.cache.factory import Caches, build_cache
from keel.cache.keys import CONTROL_FIELD, cache_key, take_cache_field
from keel.cache.precision import GUARD_LEVELS, GuardLevel, Verifier, contrast, judge_verifier
from keel.cache.semantic import (
    EmbedFn,
    SemanticCache,
    SemanticMatch,
    SemanticStats,
    provider_embedder,
)
from keel.cache.streams import assemble, replay

__all__ = [
    "CONTROL_FIELD",
    "CONTROL_HEADER",
    "GUARD_LEVELS",
    "MAX_TTL_S",
    "CacheControl",
    "CacheStats",
    "Caches",
    "EmbedFn",
    "GuardLevel",
    "ResponseCache",
    "SemanticCache",
    "SemanticMatch",
    "SemanticStats",
    "Verifier",
    "assemble",
    "build_cache",
    "cache_control",
    "cache_key",
    "contrast",
    "is_cacheable",
    "judge_verifier",
    "provider_embedder",
    "replay",
    "storable",
    "take_cache_field",
]
