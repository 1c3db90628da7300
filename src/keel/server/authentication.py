"""Authentication before anything else reads the request.

Pure ASGI, just inside the arrival stamp: every request but the public ones (health, readiness,
the API description) is authenticated from the in-memory snapshot before routing, so nothing
parses the body of a caller who has no business sending one, and management bodies are cut
off at `server.max_request_body_bytes` (the inference routes enforce it themselves). The actor
goes to `scope["state"]["actor"]`, where `request.state.actor` finds it; what it may do is
decided per route by `keel.server.access.authorized`. A refusal here names nobody, so it goes
to the audit log through `AuditLog.record_refusal`, tallied per source.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keel.errors import KeelError, RequestTooLargeError
from keel.governance.permissions import PUBLIC_ROUTES
from keel.server.body import declared_length
from keel.server.errors import error_response

if TYPE_CHECKING:
    from keel.server.services import Services

__all__ = ["AuthenticateFirst"]

_PUBLIC_PATHS = frozenset(path for _, path in PUBLIC_ROUTES)
_INFERENCE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})


class AuthenticateFirst:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        keel: Services = scope["app"].state.keel
        if scope["path"] == "/metrics" and keel.settings.metrics.public:
            # An operator made the scrape public (`metrics.public`); the route checks the rest.
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        client_ip = client[0] if client else None
        try:
            actor = await keel.access.authenticate(Headers(scope=scope), client_ip)
        except KeelError as exc:
            # Evidence of guessing, scanning or a leaked key used from elsewhere; tallied per
            # source, since each of these requests costs its sender nothing.
            keel.audit.record_refusal(
                "access.denied" if exc.status_code == 403 else "access.unauthenticated",
                code=exc.code,
                reason=exc.message,
                target=f"{scope['method']} {scope['path'][:200]}",
                outcome=str(exc.status_code),
                source_ip=client_ip,
            )
            await error_response(exc)(scope, receive, send)
            return
        scope.setdefault("state", {})["actor"] = actor
        if scope["path"] in _INFERENCE_PATHS:
            await self.app(scope, receive, send)
            return
        limit = keel.settings.server.max_request_body_bytes
        try:
            declared = declared_length(Headers(scope=scope))
        except KeelError as exc:
            await error_response(exc)(scope, receive, send)
            return
        if declared is not None and declared > limit:
            await error_response(_too_large(limit))(scope, receive, send)
            return
        await _BodyLimit(self.app, limit)(scope, receive, send)


class _BodyLimit:
    """Counts a body that declares no length as it arrives. Past the limit it answers 413
    itself and tells the app the client is gone, so the app's own answer goes nowhere."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.seen = 0
        self.refused = False
        self.started = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted() -> Message:
            if self.refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                self.seen += len(message.get("body", b""))
                if self.seen > self.limit and not self.started:
                    self.refused = True
                    await error_response(_too_large(self.limit))(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def sending(message: Message) -> None:
            if self.refused:
                return
            self.started = True
            await send(message)

        await self.app(scope, counted, sending)


def _too_large(limit: int) -> RequestTooLargeError:
    return RequestTooLargeError(f"the request body is larger than {limit} bytes")
