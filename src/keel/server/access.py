"""Authentication and authorization for the routes, and the audit helper they share.

Every management route runs `authorized` (a router-level dependency added by `create_app`):
it authenticates the caller, checks the route's permission in the matrix
(`keel.governance.permissions`) and leaves the `Actor` on the request for `current_actor`.
The inference routes call `authenticate_inference` themselves: they skip dependency injection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import Request

from keel.errors import InvalidRequestError, PermissionDeniedError
from keel.governance.permissions import PUBLIC_ROUTES, Permission, permission_for
from keel.identity import ROLES, Actor

if TYPE_CHECKING:
    from keel.server.services import Services

__all__ = ["audited", "authenticate_inference", "authorized", "client_ip", "current_actor"]

_LOCAL = Actor("local", frozenset({"admin"}), kind="local")


def current_actor(request: Request) -> Actor:
    actor: Actor | None = getattr(request.state, "actor", None)
    return actor if actor is not None else _LOCAL


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
    actor = await keel.access.authenticate(request.headers, client_ip(request))
    if actor.kind == "local":
        actor = _acting_as(request, actor)
    _authorize(keel, actor, permission_for(method, path), f"{method} {path}")
    request.state.actor = actor


async def authenticate_inference(
    keel: Services, request: Request, permission: Permission, what: str
) -> Actor:
    actor = await keel.access.authenticate(request.headers, client_ip(request))
    _authorize(keel, actor, permission, what)
    return actor


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
    try:
        keel.access.authorize(actor, permission, what)
    except PermissionDeniedError as exc:
        keel.audit.record(
            "access.denied", actor=actor, target=what, outcome="denied", detail={"code": exc.code}
        )
        raise


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
