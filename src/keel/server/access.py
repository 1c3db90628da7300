"""Authentication and authorization for the routes, and the audit helper they share.

Every management route runs `authorized` (a router-level dependency added by `create_app`):
it authenticates the caller, checks the route's permission in the matrix
(`keel.governance.permissions`) and leaves the `Actor` on the request for `current_actor`.
The inference routes call `authenticate_inference` themselves: they skip dependency injection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import Request

from keel.errors import InvalidRequestError, KeelError
from keel.governance.access import LOCAL_ADMIN
from keel.governance.permissions import PUBLIC_ROUTES, Permission, permission_for
from keel.identity import ROLES, Actor

if TYPE_CHECKING:
    from keel.server.services import Services

__all__ = [
    "audited",
    "authenticate_inference",
    "authorized",
    "client_ip",
    "current_actor",
    "record_denial",
]


def current_actor(request: Request) -> Actor:
    actor: Actor | None = getattr(request.state, "actor", None)
    return actor if actor is not None else LOCAL_ADMIN


def client_ip(request: Request) -> str | None:
    # The socket's peer. Behind a proxy, bind Keel to it alone: X-Forwarded-For is not trusted.
    return request.client.host if request.client else None


async def authorized(request: Request) -> None:
    route = request.scope.get("route")
    path: str = getattr(route, "path", request.url.path)
    method = request.method
    if (method, path) in PUBLIC_ROUTES:
        return
    keel: Services = request.app.state.keel
    actor = await _authenticated(keel, request)
    if actor.kind == "local":
        actor = _acting_as(request, actor)
    _authorize(keel, actor, permission_for(method, path), f"{method} {path}")
    # The body has been read by now (FastAPI reads it before dependencies): the key must
    # still be valid after however long that took.
    keel.access.still_valid(actor)
    request.state.actor = actor


async def authenticate_inference(
    keel: Services, request: Request, permission: Permission, what: str
) -> Actor:
    actor = await _authenticated(keel, request)
    _authorize(keel, actor, permission, what)
    return actor


async def _authenticated(keel: Services, request: Request) -> Actor:
    """The actor `AuthenticateFirst` found; authenticated here when the app runs without it."""
    found: Actor | None = request.scope.get("state", {}).get("actor")
    if found is not None:
        return found
    return await keel.access.authenticate(request.headers, client_ip(request))


def _acting_as(request: Request, local: Actor) -> Actor:
    """Open mode only (one local user, already admin): `x-keel-actor` / `x-keel-roles` let
    that user try multi-person workflows such as approvals. With authentication required
    they are ignored: identity comes from the credential alone."""
    name = request.headers.get("x-keel-actor")
    raw_roles = request.headers.get("x-keel-roles")
    if name is None and raw_roles is None:
        return local
    name = (name or local.name).strip()
    if not name or len(name) > 128:
        raise InvalidRequestError(
            "the x-keel-actor header must be 1 to 128 characters", param="x-keel-actor"
        )
    roles = frozenset(role.strip() for role in (raw_roles or "admin").split(",") if role.strip())
    unknown = sorted(roles - set(ROLES))
    if unknown or not roles:
        raise InvalidRequestError(
            f"x-keel-roles: unknown role(s) {', '.join(unknown) or '(none given)'}; "
            f"use a comma list of {', '.join(ROLES)}",
            param="x-keel-roles",
        )
    return Actor(name, roles, kind="local", source_ip=local.source_ip)


def _authorize(keel: Services, actor: Actor, permission: Permission | None, what: str) -> None:
    # A refusal reaches the error handler (or, for inference, `_serve`), which audits it.
    keel.access.authorize(actor, permission, what)


def record_denial(keel: Services, actor: Actor | None, what: str, error: KeelError) -> None:
    """A refused request, in the audit log: who tried what, and why it was refused."""
    keel.audit.record(
        "access.denied" if error.status_code == 403 else "access.unauthenticated",
        actor=actor,
        target=what[:255],
        outcome=str(error.status_code),
        detail={"code": error.code},
        source_ip=actor.source_ip if actor else None,
    )


def audited(
    request: Request,
    action: str,
    target: str | None,
    *,
    before: Any = None,
    after: Any = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append a management action to the audit log (off the request path)."""
    keel: Services = request.app.state.keel
    keel.audit.record(
        action,
        actor=current_actor(request),
        target=target,
        before=before,
        after=after,
        detail=detail,
        request_id=request.headers.get("x-request-id"),
        source_ip=client_ip(request),
    )
