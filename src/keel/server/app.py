"""`create_app(settings)` assembles the server; nothing happens at import time."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from keel import __version__
from keel.config import Settings
from keel.errors import ConfigError
from keel.governance.access import is_loopback
from keel.routing.router import check_deployments
from keel.server.access import authorized
from keel.server.authentication import AuthenticateFirst
from keel.server.browser_guard import JsonBodiesOnly, guard_browsers
from keel.server.errors import install_error_handlers
from keel.server.openapi import install_openapi
from keel.server.routes import audit, governance, inference, operations, registry
from keel.server.routes.metrics import router as metrics_router
from keel.server.routes.traces import router as traces_router
from keel.server.services import running_services
from keel.server.timing import ArrivalTime

__all__ = ["create_app"]

# The collector's thresholds once start-up is frozen (defaults 700, 10, 10). What survives a
# request is almost never garbage, so the older generations are walked less often; the first
# stays near the default, since its pauses grow with it (bench/gc_pauses.py: at 7,000 a young
# collection took 2.5 ms, at 1,000 0.15 ms, and no full collection ran in 3,000 requests).
_SERVING_THRESHOLDS = (1_000, 20, 50)


def create_app(settings: Settings, *, own_process: bool = False) -> FastAPI:
    """The Keel app. `own_process` (set by `keel serve`) lets it tune the Python runtime,
    which only the owner of the process should do."""
    # Configuration mistakes surface here, before a socket is bound.
    check_deployments(settings)
    if settings.auth.required is False and (
        settings.auth.admin_key is not None or not is_loopback(settings.server.host)
    ):
        raise ConfigError(
            f"auth.required: false is allowed only on a loopback bind without an admin key "
            f"(host is {settings.server.host})"
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running_services(settings) as running:
            app.state.keel = running
            freezing = asyncio.create_task(_freeze_after(running.warmup)) if own_process else None
            try:
                yield
            finally:
                if freezing is not None:
                    freezing.cancel()

    app = FastAPI(
        title="Keel",
        version=__version__,
        summary="OpenAI-compatible gateway over every LLM provider and local models.",
        lifespan=lifespan,
    )
    # Each add_middleware wraps the ones before it. Inside ArrivalTime, so the overhead figure
    # includes them: CORS and the host check, then authentication, then the content-type rule.
    app.add_middleware(JsonBodiesOnly)
    app.add_middleware(AuthenticateFirst)
    guard_browsers(app, settings)
    app.add_middleware(ArrivalTime)
    install_error_handlers(app)
    install_openapi(app)
    # The inference routes authenticate inline (no dependency injection on the hot path);
    # every other route goes through the permission matrix here.
    app.include_router(inference.router)
    guarded = [Depends(authorized)]
    app.include_router(inference.models_router, dependencies=guarded)
    app.include_router(operations.router, dependencies=guarded)
    app.include_router(registry.router, dependencies=guarded)
    app.include_router(registry.lineage_router, dependencies=guarded)
    app.include_router(governance.router, dependencies=guarded)
    app.include_router(audit.router, dependencies=guarded)
    # monitoring: metrics
    # Not `guarded`: it authorizes itself, unless `metrics.public` opens it to scrapers.
    app.include_router(metrics_router)
    # monitoring: traces
    app.include_router(traces_router, dependencies=guarded)
    # monitoring: feedback and quality
    from keel.server.routes import feedback as feedback_routes

    app.include_router(feedback_routes.router, dependencies=guarded)
    # monitoring: drift
    from keel.server.routes import drift as drift_routes

    app.include_router(drift_routes.router, dependencies=guarded)
    # monitoring: alerts
    from keel.server.routes import alerts as alert_routes

    app.include_router(alert_routes.router, dependencies=guarded)
    # experiments: tracking
    from keel.server.routes import tracking as tracking_routes

    app.include_router(tracking_routes.experiments_router, dependencies=guarded)
    app.include_router(tracking_routes.runs_router, dependencies=guarded)
    # experiments: datasets and prompts
    from keel.server.routes import library as library_routes

    app.include_router(library_routes.datasets_router, dependencies=guarded)
    app.include_router(library_routes.prompts_router, dependencies=guarded)
    app.include_router(library_routes.scorers_router, dependencies=guarded)
    return app


async def _freeze_after(warmup: asyncio.Task[None] | None) -> None:
    """Start-up and the background warm-up (local models, the PII analyzer: torch,
    phonenumbers, ...) leave ~10^5 long-lived objects that every full collection would walk
    again, stalling every request in flight. Freezing them once the warm-up is over takes them
    out of the collector's work; freezing before it ends would leave its objects in."""
    if warmup is not None:
        await asyncio.wait([warmup])
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_SERVING_THRESHOLDS)
