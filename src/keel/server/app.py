"""`create_app(settings)` assembles the server; nothing happens at import time."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from keel import __version__
from keel.config import Settings
from keel.routing.router import check_deployments
from keel.server.errors import install_error_handlers
from keel.server.routes import inference, operations, registry
from keel.server.services import running_services
from keel.server.timing import ArrivalTime

__all__ = ["create_app"]


def create_app(settings: Settings, *, own_process: bool = False) -> FastAPI:
    """The Keel app. `own_process` (set by `keel serve`) lets it tune the Python runtime,
    which only the owner of the process should do."""
    # Configuration mistakes surface here, before a socket is bound.
    check_deployments(settings)

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
    app.add_middleware(ArrivalTime)
    install_error_handlers(app)
    app.include_router(inference.router)
    app.include_router(operations.router)
    app.include_router(registry.router)
    app.include_router(registry.lineage_router)
    return app
