"""What the routes use, built once per app in the lifespan and reached through `services()`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
from fastapi import Request

from keel.cache import Caches, build_cache, provider_embedder
from keel.config import Settings
from keel.errors import ConfigError
from keel.gateway import Gateway, PriceTable
from keel.gateway.caching import ResponseCaching
from keel.registry import Registry, RegistryView
from keel.routing import Router, build_router
from keel.store import Database, RequestRecorder

__all__ = ["Services", "running_services", "services"]

log = logging.getLogger("keel.server")


@dataclass(slots=True)
class Services:
    settings: Settings
    database: Database
    recorder: RequestRecorder
    router: Router
    gateway: Gateway
    http: aiohttp.ClientSession
    registry: Registry
    registry_view: RegistryView
    warmup: asyncio.Task[None] | None = None

    def registry_changed(self) -> None:
        """A registry write went through this replica: the gateway's view reloads now."""
        self.registry_view.changed()


async def services(request: Request) -> Services:
    # async on purpose: FastAPI runs a plain `def` dependency in a worker thread, per request.
    found: Services = request.app.state.keel
    return found


@asynccontextmanager
async def running_services(settings: Settings) -> AsyncIterator[Services]:
    settings.home_dir.mkdir(parents=True, exist_ok=True)
    database = Database(settings.effective_database_url)
    await asyncio.to_thread(database.migrate)
    recorder = RequestRecorder(
        database,
        batch_size=settings.server.record_batch_size,
        flush_interval_s=settings.server.record_flush_interval_s,
    )
    await recorder.start()
    http = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1000, ttl_dns_cache=300),
        # Keel's own calls must not pick up proxies or credentials from the environment.
        trust_env=False,
    )
    prices = PriceTable(settings.prices)
    router = build_router(settings, http, prices)
    caching = ResponseCaching(
        _build_caches(settings, router), semantic_default=settings.cache.semantic.enabled
    )
    registry = Registry(database, approvals_required=settings.registry.approvals_required)
    registry_view = RegistryView(registry, refresh_interval_s=settings.registry.refresh_interval_s)
    await registry_view.start()
    gateway = Gateway(router, recorder, prices, caching=caching, registry=registry_view)
    running = Services(settings, database, recorder, router, gateway, http, registry, registry_view)
    if settings.local_models.preload:
        running.warmup = asyncio.create_task(_warm_up(router))
    try:
        yield running
    finally:
        if running.warmup is not None and not running.warmup.done():
            running.warmup.cancel()
        await registry_view.close()
        await caching.close()
        await recorder.stop()
        for provider in router.providers:
            await provider.aclose()
        await http.close()
        database.dispose()


def _build_caches(settings: Settings, router: Router) -> Caches | None:
    config = settings.cache
    if not config.enabled:
        return None
    embed = None
    wants_semantic = config.semantic.enabled or any(
        group.cache.semantic for group in router.groups()
    )
    if wants_semantic:
        model = config.semantic.embedding_model
        provider = router.group(model).first_provider
        if not provider.supports_embeddings:
            raise ConfigError(
                f"cache.semantic.embedding_model: {model!r} is not an embedding model"
            )
        embed = provider_embedder(provider, model)
    return build_cache(
        redis_url=settings.redis_url,
        sqlite_path=settings.home_dir / "cache.sqlite3" if config.persistent else None,
        max_entries=config.max_entries,
        default_ttl_s=config.default_ttl_s,
        second_tier_max_entries=config.second_tier_max_entries,
        embed=embed,
        semantic_threshold=config.semantic.threshold,
        semantic_max_entries=config.semantic.max_entries_per_scope,
    )


async def _warm_up(router: Router) -> None:
    """Load local models in the background so the first request doesn't pay for it."""
    for provider in router.providers:
        if provider.is_local:
            try:
                await provider.start()
            except Exception:
                log.exception("could not load local model %s", provider.config.id)
