"""When a request reached Keel, so `x-keel-overhead-ms` counts the framework's time too."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["ARRIVAL_KEY", "ArrivalTime"]

ARRIVAL_KEY = "keel.arrived"


class ArrivalTime:
    """Pure ASGI (no per-request objects): stamps `scope[ARRIVAL_KEY]` with perf_counter()."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[ARRIVAL_KEY] = time.perf_counter()
        await self.app(scope, receive, send)
