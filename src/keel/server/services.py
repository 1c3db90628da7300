"""What the routes use, built once per app in the lifespan and reached through `services()`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from fastapi import Request

from keel import secrets
from keel.cache import Caches, Verifier, build_cache, judge_verifier, provider_embedder
from keel.config import Settings
from keel.errors import ConfigError, KeelError
from keel.gateway import CallObserver, Gateway, PriceTable
from keel.gateway.caching import ResponseCaching
from keel.gateway.service import Governance
from keel.governance.access import Access
from keel.governance.audit import AuditLog
from keel.governance.bootstrap import bootstrap_admin
from keel.governance.directory import Directory
from keel.governance.guardrails import Guardrails
from keel.governance.oidc import OidcVerifier
from keel.governance.policy import RequestPolicy
from keel.governance.propagation import ChangeFeed, change_channel
from keel.governance.quotas import Quotas, build_quotas
from keel.monitoring.alerts_service import Alerts, start_alerts
from keel.monitoring.capture import PayloadCapture
from keel.monitoring.drift import DriftMonitor, register_gauges
from keel.monitoring.metrics import Metrics
from keel.monitoring.tracing import Tracing, build_tracing
from keel.registry import Registry, RegistryView
from keel.routing import AttemptTrace, Router, build_router
from keel.schemas import ChatCompletionRequest
from keel.store import Database, RequestRecorder
from keel.tracking.datasets import DatasetStore
from keel.tracking.prompts import PromptStore
from keel.tracking.service import TrackingService

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
    directory: Directory
    access: Access
    audit: AuditLog
    quotas: Quotas
    policy: RequestPolicy
    guardrails: Guardrails
    warmup: asyncio.Task[None] | None = None
    # monitoring: metrics
    metrics: Metrics | None = None
    # monitoring: traces
    tracing: Tracing | None = None
    # monitoring: drift
    drift: DriftMonitor | None = None
    payload_capture: PayloadCapture | None = None
    # monitoring: alerts
    alerts: Alerts | None = None
    # experiments: tracking
    tracking: TrackingService | None = None
    # experiments: datasets and prompts
    datasets: DatasetStore | None = None
    prompts: PromptStore | None = None

    async def registry_changed(self) -> None:
        """A registry write went through this replica: the gateway's view reloads before the
        write is acknowledged, so the writer's next call sees it."""
        self.registry_view.changed()
        await self.registry_view.settle()


async def services(request: Request) -> Services:
    # async on purpose: FastAPI runs a plain `def` dependency in a worker thread, per request.
    found: Services = request.app.state.keel
    return found


@asynccontextmanager
async def running_services(settings: Settings) -> AsyncIterator[Services]:
    try:
        settings.home_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"home: cannot create {settings.home_dir}: {exc.strerror}; point home (or "
            "KEEL_HOME) at a directory Keel may write"
        ) from None
    # Before anything can fail and say so: configured credentials never appear in errors,
    # records or logs.
    secrets.register(settings.secret_values())
    secrets.guard_loggers()
    database = Database(settings.effective_database_url)
    await asyncio.to_thread(database.migrate)
    http = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1000, ttl_dns_cache=300),
        # Keel's own calls must not pick up proxies or credentials from the environment.
        trust_env=False,
    )
    prices = PriceTable(settings.prices)
    router = build_router(settings, http, prices)
    guardrails = Guardrails(settings.pii, settings.guardrails, chat=_gateway_chat(router))
    recorder = RequestRecorder(
        database,
        batch_size=settings.server.record_batch_size,
        flush_interval_s=settings.server.record_flush_interval_s,
        prepare=_masking_error_messages(guardrails),
    )
    await recorder.start()
    audit = AuditLog(
        database,
        batch_size=settings.server.record_batch_size,
        flush_interval_s=settings.server.record_flush_interval_s,
        refusal_window_s=settings.server.refusal_audit_window_s,
        refusal_max_sources=settings.server.refusal_audit_max_sources,
    )
    await audit.start()
    changes = (
        ChangeFeed(settings.redis_url, channel=change_channel(settings.redis_prefix))
        if settings.redis_url
        else None
    )
    directory = Directory(database, on_commit=changes.announce if changes else None)
    oidc = OidcVerifier(settings.auth.oidc) if settings.auth.oidc else None
    access = Access(directory, settings.auth, host=settings.server.host, oidc=oidc)
    await access.start()
    if changes is not None:
        await changes.start(access.changed_elsewhere)
    if access.required:
        await bootstrap_admin(directory, access, settings, audit)
    quotas = build_quotas(
        settings.redis_url, settings.quotas.failure_mode, redis_prefix=settings.redis_prefix
    )
    caching = ResponseCaching(
        _build_caches(settings, router), semantic_default=settings.cache.semantic.enabled
    )
    registry = Registry(database, approvals_required=settings.registry.approvals_required)
    registry_view = RegistryView(registry, refresh_interval_s=settings.registry.refresh_interval_s)
    await registry_view.start()
    policy = RequestPolicy(access, settings.quotas, settings.residency, prices)
    governance = Governance(policy, quotas, guardrails, audit)
    # Each monitoring part that watches calls adds its observer here.
    observers: list[CallObserver] = []
    # monitoring: metrics (observer)
    metrics = (
        Metrics(settings.metrics, router=router, recorder=recorder, audit=audit, caching=caching)
        if settings.metrics.enabled
        else None
    )
    if metrics is not None:
        observers.append(metrics.observe)
    # monitoring: traces (observer)
    tracing = build_tracing(settings, database, guardrails.mask_for_storage)
    if tracing is not None:
        observers.append(tracing.observe)
    # monitoring: drift (observer)
    payload_capture = (
        PayloadCapture(settings.drift, database, router, guardrails)
        if settings.drift.capture
        else None
    )
    if payload_capture is not None:
        await payload_capture.start()
        observers.append(payload_capture.observe)
    # evaluation: suites and search (observer)
    gateway = Gateway(
        router,
        recorder,
        prices,
        caching=caching,
        registry=registry_view,
        governance=governance,
        observers=tuple(observers),
    )
    # Again, now that every module the services use is imported and has its logger.
    secrets.guard_loggers()
    running = Services(
        settings,
        database,
        recorder,
        router,
        gateway,
        http,
        registry,
        registry_view,
        directory,
        access,
        audit,
        quotas,
        policy,
        guardrails,
    )
    # Each part built on the services starts here.
    # monitoring: metrics (start)
    running.metrics = metrics
    # monitoring: traces (start)
    if tracing is not None:
        await tracing.start()
        running.tracing = tracing
        gateway.tracing = True
    # monitoring: feedback and quality (start)
    from keel.monitoring.quality_gauges import QualityGauges

    # Gauges only where there is a registry to scrape; they refresh in the background.
    quality_gauges: QualityGauges | None = None
    if running.metrics is not None:
        quality_gauges = QualityGauges(database)
        running.metrics.registry.register(quality_gauges)
        await quality_gauges.start()
    # monitoring: drift (start)
    running.payload_capture = payload_capture
    running.drift = DriftMonitor(database, registry, settings.drift)
    await asyncio.to_thread(running.drift.load_latest)
    if running.metrics is not None:
        register_gauges(running.drift, running.metrics.registry)
    # monitoring: alerts (start)
    running.alerts = await start_alerts(settings, database, http, registry)
    # experiments: tracking (start)
    running.tracking = TrackingService.build(database, settings.tracking, settings.home_dir)
    await running.tracking.start()
    # experiments: datasets and prompts (start)
    # Rows drawn from production go through the PII store policy before they are kept.
    running.datasets = DatasetStore(database, settings.home_dir, mask=guardrails.mask_for_storage)
    running.prompts = PromptStore(database)
    # evaluation: suites and search (start)
    running.warmup = asyncio.create_task(
        _warm_up(router if settings.local_models.preload else None, guardrails)
    )
    try:
        yield running
    finally:
        if running.warmup is not None and not running.warmup.done():
            running.warmup.cancel()
        # Each part built on the services stops here, before what it uses.
        # monitoring: traces (stop)
        if tracing is not None:
            await tracing.stop()
        # monitoring: feedback and quality (stop)
        if quality_gauges is not None:
            await quality_gauges.stop()
        # monitoring: drift (stop)
        if payload_capture is not None:
            await payload_capture.stop()
        # monitoring: alerts (stop)
        if running.alerts is not None:
            await running.alerts.stop()
        # experiments: tracking (stop)
        if running.tracking is not None:
            await running.tracking.stop()
        # evaluation: suites and search (stop)
        await registry_view.close()
        await caching.close()
        if changes is not None:
            await changes.aclose()
        await access.close()
        await gateway.drain()
        await quotas.aclose()
        await recorder.stop()
        await audit.stop()
        for provider in router.providers:
            await provider.aclose()
        await http.close()
        database.dispose()


def _masking_error_messages(guardrails: Guardrails) -> Callable[[dict[str, Any]], None]:
    """Error messages can quote a prompt back (a provider's 400 often does): what is stored
    goes through the PII store policy, in the recorder's thread."""

    def prepare(record: dict[str, Any]) -> None:
        if record.get("error_message"):
            record["error_message"] = guardrails.mask_for_storage(record["error_message"])

    return prepare


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
    verifier = _cache_verifier(settings, router) if wants_semantic else None
    return build_cache(
        redis_url=settings.redis_url,
        redis_prefix=f"{settings.redis_prefix}cache:",
        sqlite_path=settings.home_dir / "cache.sqlite3" if config.persistent else None,
        max_entries=config.max_entries,
        default_ttl_s=config.default_ttl_s,
        second_tier_max_entries=config.second_tier_max_entries,
        embed=embed,
        semantic_threshold=config.semantic.threshold,
        semantic_max_entries=config.semantic.max_entries_per_scope,
        semantic_guard=config.semantic.guard,
        verifier=verifier,
        verify_band=config.semantic.verify_band,
    )


def _cache_verifier(settings: Settings, router: Router) -> Verifier | None:
    """The judge for the semantic cache's `verify` guard level: a chat model the gateway
    serves, called through the router (retries and fallbacks apply)."""
    config = settings.cache.semantic
    wants_verify = config.guard == "verify" or any(
        group.cache.semantic_guard == "verify" for group in router.groups()
    )
    if not wants_verify:
        return None
    if config.verify_model is None:
        raise ConfigError("cache.semantic.verify_model: the guard level verify needs a judge model")
    try:
        router.resolve(config.verify_model, "chat")
    except KeelError as exc:
        raise ConfigError(f"cache.semantic.verify_model: {exc.message}") from exc
    return judge_verifier(_gateway_chat(router), config.verify_model)


def _gateway_chat(router: Router) -> Callable[[str, list[dict[str, Any]]], Awaitable[str]]:
    """Model-based guardrails (a toxicity or Llama-Guard-style classifier) call a model through
    the gateway's own router: retries, fallbacks and health apply to them too."""

    async def chat(model: str, messages: list[dict[str, Any]]) -> str:
        group = router.resolve(model, "chat")
        request = ChatCompletionRequest.model_validate(
            {"model": model, "messages": messages, "temperature": 0, "max_tokens": 16}
        )
        response = await router.execute(
            group, lambda provider: provider.chat(request), AttemptTrace()
        )
        content = response["choices"][0]["message"].get("content")
        return content if isinstance(content, str) else ""

    return chat


async def _warm_up(router: Router | None, guardrails: Guardrails) -> None:
    """Load local models (unless they load on first use) and the PII analyzer in the
    background, so the first request doesn't pay for them."""
    for provider in router.providers if router is not None else ():
        if provider.is_local:
            try:
                await provider.start()
            except KeelError as exc:
                # A missing or broken model file: one line, and /readyz says the same.
                log.error("could not load local model: %s", exc.message)
            except Exception:
                log.exception("could not load local model %s", provider.config.id)
    try:
        await asyncio.to_thread(guardrails.load)
    except Exception:
        log.exception("could not load the PII analyzer")
