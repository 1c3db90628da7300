"""`create_app(settings)` assembles the server; nothing happens at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from keel import __version__
from keel.config import Settings
from keel.routing.router import check_deployments
from keel.server.errors import install_error_handlers
from keel.server.routes import inference, operations
from keel.server.services import running_services

__all__ = ["create_app"]


def create_app(settings: Settings) -> FastAPI:
    # Configuration mistakes surface here, before a socket is bound.
    check_deployments(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running_services(settings) as running:
            app.state.keel = running
            yield

    app = FastAPI(
        title="Keel",
        version=__version__,
        summary="OpenAI-compatible gateway over every LLM provider and local models.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(inference.router)
    app.include_router(operations.router)
    return app
