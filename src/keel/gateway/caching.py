"""The response cache on the request path: read the client's cache control, decide whether a
request is cacheable, look it up, and store answers off the path.

Only chat completions are cached. A hit is served at no upstream cost (recorded with cost 0) and
replayed as a stream when the client asked for one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from keel.cache import (
    CacheControl,
    Caches,
    GuardLevel,
    cache_control,
    cache_key,
    is_cacheable,
    take_cache_field,
)
from keel.routing import ModelGroup
from keel.schemas import ChatCompletionRequest

__all__ = ["CachePlan", "ResponseCaching"]

log = logging.getLogger("keel.gateway")


@dataclass(slots=True)
class CachePlan:
    key: str
    group: ModelGroup
    request: ChatCompletionRequest
    control: CacheControl
    scope: str | None
    semantic: bool
    semantic_threshold: float | None
    semantic_guard: GuardLevel | None = None
    # Why the semantic cache's precision guard refused a similar enough entry, if it did.
    guard_refusal: str | None = None


class ResponseCaching:
    def __init__(self, caches: Caches | None, *, semantic_default: bool = False) -> None:
        self._caches = caches
        self._semantic_default = semantic_default
        self._pending: set[asyncio.Task[Any]] = set()

    @staticmethod
    def control(request: ChatCompletionRequest, headers: Mapping[str, str]) -> CacheControl:
        """Take Keel's `cache` field off the request (it must never reach a provider) and
        combine it with the `x-keel-cache` header; bad values are a 400."""
        return cache_control(take_cache_field(request), headers)

    def plan(
        self,
        group: ModelGroup,
        request: ChatCompletionRequest,
        control: CacheControl,
        scope: str | None,
    ) -> CachePlan | None:
        if self._caches is None or not group.cache.enabled:
            return None
        if not is_cacheable(request, control, group.cache.always):
            return None
        semantic = group.cache.semantic
        return CachePlan(
            key=cache_key(group.id, request, scope),
            group=group,
            request=request,
            control=control,
            scope=scope,
            semantic=(self._semantic_default if semantic is None else semantic)
            and self._caches.semantic is not None,
            semantic_threshold=group.cache.semantic_threshold,
            semantic_guard=group.cache.semantic_guard,
        )

    async def lookup(self, plan: CachePlan) -> dict[str, Any] | None:
        if self._caches is None or not plan.control.may_serve:
            return None
        hit = await self._caches.exact.get(plan.key)
        if hit is None and plan.semantic and self._caches.semantic is not None:
            found = await self._caches.semantic.match(
                plan.group.id,
                plan.request,
                scope=plan.scope,
                threshold=plan.semantic_threshold,
                guard=plan.semantic_guard,
            )
            hit, plan.guard_refusal = found.response, found.refusal
        return hit

    def store(self, plan: CachePlan | None, response: dict[str, Any]) -> None:
        """Store in the background: the client never waits for the cache."""
        if plan is None or self._caches is None or not plan.control.may_store:
            return
        ttl_s = plan.control.ttl_s or plan.group.cache.ttl_s
        self._spawn(self._caches.exact.set(plan.key, response, ttl_s=ttl_s))
        if plan.semantic and self._caches.semantic is not None:
            self._spawn(
                self._caches.semantic.store(
                    plan.group.id, plan.request, response, scope=plan.scope, ttl_s=ttl_s
                )
            )

    def stats(self) -> dict[str, Any]:
        """What this replica's caches have done since it started: the exact cache's entries in
        memory, hits and stores, and the semantic cache's hits, misses and the candidates its
        precision guard refused, by reason."""
        if self._caches is None:
            return {"enabled": False, "exact": None, "semantic": None}
        exact = self._caches.exact
        semantic = self._caches.semantic
        return {
            "enabled": True,
            "exact": {"entries_in_memory": len(exact), **asdict(exact.stats)},
            "semantic": None if semantic is None else asdict(semantic.stats),
        }

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("storing a cached response failed: %r", task.exception())

    async def flush(self) -> None:
        """Wait for pending stores (tests and shutdown)."""
        while self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        if self._caches is not None:
            await self._caches.flush()

    async def close(self) -> None:
        await self.flush()
        if self._caches is not None:
            await self._caches.close()
