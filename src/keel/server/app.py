"""`create_app(settings)` assembles the server; nothing happens at import time."""

from __future__ import annotations

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
from keel.server.services import running_services
from keel.server.timing import ArrivalTime

__all__ = ["create_app"]


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
            if own_process:
                # Start-up leaves ~10^5 long-lived objects (models, libraries) that every full
                # collection would walk again, stalling all requests in flight; freezing them
                # takes them out of the collector's work.
                gc.collect()
                gc.freeze()
            yield

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
    return app
