"""Identities and keys: /v1/keel/{whoami,orgs,teams,users,keys}, and quota usage.

Every write is audited with its before and after; a key's secret appears in exactly one
response, the one that creates it, and nowhere else (not in the audit log either).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query, Request
from pydantic import ConfigDict, Field, model_validator
from starlette.responses import JSONResponse

from keel.errors import InvalidRequestError, PermissionDeniedError
from keel.governance.config import LimitSet
from keel.governance.directory import Directory
from keel.governance.keys import KeyBounds
from keel.governance.permissions import role_allows
from keel.identity import Actor
from keel.server.access import audited, current_actor
from keel.server.body import StoredBody
from keel.server.jsonable import to_jsonable
from keel.server.openapi import error_responses
from keel.server.services import Services

__all__ = ["router"]

router = APIRouter(prefix="/v1/keel", tags=["governance"], responses=error_responses(401, 403, 500))

_NO_NUL = r"^[^\x00]*$"
_NAME_PATH = Path(..., min_length=1, max_length=128, pattern=_NO_NUL)
_KEY_ID = Path(..., min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_]+$")
Role = Literal["admin", "maintainer", "developer", "viewer"]


_Body = StoredBody
# What a route can answer besides 401, 403 and 500 (the router's): 400 with any parameter or
# body, 413 and 415 with any body, 404 where it names something, 409 where a write can collide.
_WRITES = error_responses(400, 404, 409, 413, 415)
_FINDS = error_responses(400, 404)
_LATEST = datetime(9000, 1, 1, tzinfo=UTC)  # far enough; every database stores it

# One rule per field, shared by the POST that creates and the PATCH that changes: a value one
# refuses, the other refuses too.
Name = Annotated[str, Field(min_length=1, max_length=128)]
NameRef = Annotated[str, Field(max_length=128)]
Email = Annotated[str, Field(max_length=320)]
# A region tag as deployments carry it (`eu-west-1`): printable, no control characters, no
# blank at either end.
_NOT_BLANK = r"[^\x00-\x20\x7f-\x9f]"
Region = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=rf"^{_NOT_BLANK}(?:[^\x00-\x1f\x7f-\x9f]*{_NOT_BLANK})?$",
    ),
]
Regions = Annotated[list[Region], Field(max_length=100)]


class Limits(LimitSet):
    """`LimitSet` as a request body gives it: numbers are JSON numbers, not `true` or `"7"`."""

    model_config = ConfigDict(strict=True)


class OrgBody(_Body):
    name: Name


class TeamBody(_Body):
    name: Name
    org: NameRef | None = None
    allowed_regions: Regions | None = None
    limits: Limits = Field(default_factory=Limits)


class TeamPatch(_Body):
    allowed_regions: Regions | None = None
    limits: Limits | None = None


class UserBody(_Body):
    name: Name
    kind: Literal["user", "service_account"] = "user"
    role: Role = "developer"
    team: NameRef | None = None
    org: NameRef | None = None
    email: Email | None = None
    limits: Limits = Field(default_factory=Limits)


class UserPatch(_Body):
    role: Role | None = None
    team: NameRef | None = Field(default=None, description="null: no team.")
    email: Email | None = None
    limits: Limits | None = None
    disabled: bool | None = None

    @model_validator(mode="after")
    def _no_nulls_where_meaningless(self) -> UserPatch:
        for field in ("role", "disabled"):
            if field in self.model_fields_set and getattr(self, field) is None:
                raise ValueError(f"{field} cannot be null")
        return self


class KeyBody(_Body):
    name: Name = "default"
    user: NameRef | None = Field(default=None, description="Default: yourself.")
    environment: Literal["production", "sandbox"] | None = Field(
        default=None, description="Default: production (sandbox for a sandbox credential)."
    )
    role: Role | None = Field(default=None, description="Narrower than the owner's role.")
    models: list[Annotated[str, Field(min_length=1, max_length=255)]] | None = Field(
        default=None, max_length=200
    )
    routes: list[Literal["inference", "management"]] | None = None
    ip_allowlist: list[str] | None = Field(default=None, max_length=100)
    # JSON has no time type: a time arrives as an ISO-8601 string (or a Unix timestamp).
    expires_at: datetime | None = Field(default=None, strict=False)
    expires_in_s: int | None = Field(default=None, ge=1, le=10 * 365 * 86400)
    limits: Limits | None = Field(default=None, description="Admins only.")


class RotateBody(_Body):
    overlap_s: int = Field(default=3600, ge=0, le=30 * 86400)


# -- who am I -------------------------------------------------------------------------------


@router.get("/whoami")
async def whoami(request: Request) -> JSONResponse:
    actor = current_actor(request)
    return _json(
        {
            "name": actor.name,
            "kind": actor.kind,
            "role": actor.role,
            "roles": sorted(actor.roles),
            "team": actor.team,
            "org": actor.org,
            "key_id": actor.key_id,
            "environment": actor.environment,
            "allowed_models": None
            if actor.allowed_models is None
            else sorted(actor.allowed_models),
            "auth_required": _services(request).access.required,
        }
    )


# -- organizations and teams ----------------------------------------------------------------


@router.get("/orgs")
async def list_orgs(request: Request) -> JSONResponse:
    return _listing(await asyncio.to_thread(_directory(request).list_orgs))


@router.post("/orgs", status_code=201, responses=error_responses(400, 409, 413, 415))
async def create_org(request: Request, body: OrgBody) -> JSONResponse:
    before, after = await asyncio.to_thread(_directory(request).create_org, body.name)
    return await _changed(request, "org.create", body.name, before, after, status=201)


@router.get("/teams")
async def list_teams(request: Request) -> JSONResponse:
    return _listing(await asyncio.to_thread(_directory(request).list_teams))


@router.post("/teams", status_code=201, responses=_WRITES)
async def create_team(request: Request, body: TeamBody) -> JSONResponse:
    before, after = await asyncio.to_thread(
        lambda: _directory(request).create_team(
            body.name,
            org=body.org,
            allowed_regions=body.allowed_regions,
            limits=_limits(body.limits),
        )
    )
    return await _changed(request, "team.create", body.name, before, after, status=201)


@router.get("/teams/{name}", responses=_FINDS)
async def get_team(request: Request, name: str = _NAME_PATH) -> JSONResponse:
    return _json(await asyncio.to_thread(_directory(request).get_team, name))


@router.patch("/teams/{name}", responses=_WRITES)
async def update_team(request: Request, body: TeamPatch, name: str = _NAME_PATH) -> JSONResponse:
    changes: dict[str, Any] = {}
    if "allowed_regions" in body.model_fields_set:
        changes["allowed_regions"] = body.allowed_regions
    if "limits" in body.model_fields_set:
        changes["limits"] = _limits(body.limits)
    before, after = await asyncio.to_thread(_directory(request).update_team, name, changes)
    return await _changed(request, "team.update", name, before, after)


# -- users and service accounts ---------------------------------------------------------------


@router.get("/users", responses=_FINDS)
async def list_users(
    request: Request,
    team: str | None = Query(None, max_length=128, pattern=_NO_NUL),
    kind: Literal["user", "service_account"] | None = Query(None),
) -> JSONResponse:
    users = await asyncio.to_thread(lambda: _directory(request).list_users(team=team, kind=kind))
    return _listing(users)


@router.post("/users", status_code=201, responses=_WRITES)
async def create_user(request: Request, body: UserBody) -> JSONResponse:
    before, after = await asyncio.to_thread(
        lambda: _directory(request).create_user(
            body.name,
            kind=body.kind,
            role=body.role,
            team=body.team,
            org=body.org,
            email=body.email,
            limits=_limits(body.limits),
        )
    )
    return await _changed(request, f"{body.kind}.create", body.name, before, after, status=201)


@router.get("/users/{name}", responses=_FINDS)
async def get_user(request: Request, name: str = _NAME_PATH) -> JSONResponse:
    return _json(await asyncio.to_thread(_directory(request).get_user, name))


@router.patch("/users/{name}", responses=_WRITES)
async def update_user(request: Request, body: UserPatch, name: str = _NAME_PATH) -> JSONResponse:
    changes = {field: getattr(body, field) for field in body.model_fields_set}
    if "limits" in changes:
        changes["limits"] = _limits(body.limits)
    before, after = await asyncio.to_thread(_directory(request).update_user, name, changes)
    return await _changed(request, "user.update", name, before, after)


# -- keys -----------------------------------------------------------------------------------


@router.get("/keys", responses=_FINDS)
async def list_keys(
    request: Request, user: str | None = Query(None, max_length=128, pattern=_NO_NUL)
) -> JSONResponse:
    actor = current_actor(request)
    if not role_allows(actor.role, "directory.read"):
        user = _own_name(actor, user, "list")
    keys = await asyncio.to_thread(lambda: _directory(request).list_keys(user=user))
    return _listing(keys)


@router.post("/keys", status_code=201, responses=_WRITES)
async def create_key(request: Request, body: KeyBody) -> JSONResponse:
    actor = current_actor(request)
    owner = body.user or _own_name(actor, None, "create")
    expires_at = body.expires_at
    if body.expires_in_s is not None:
        if expires_at is not None:
            raise InvalidRequestError(
                "set expires_at or expires_in_s, not both", param="expires_in_s"
            )
        expires_at = datetime.now(UTC) + timedelta(seconds=body.expires_in_s)
    if expires_at is not None and expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)
    if expires_at is not None and expires_at > _LATEST:
        raise InvalidRequestError("expires_at is too far in the future", param="expires_at")
    key, secret = await asyncio.to_thread(
        lambda: _directory(request).create_key(
            owner,
            name=body.name,
            created_by=actor,
            environment=body.environment,
            role=body.role,
            models=body.models,
            routes=list(body.routes) if body.routes is not None else None,
            ip_allowlist=body.ip_allowlist,
            expires_at=expires_at,
            limits=None if body.limits is None else _limits(body.limits),
            bounds=_bounds(request, actor),
        )
    )
    await _services(request).access.apply_change()
    audited(request, "key.create", key["id"], after=key)
    return _json({**key, "secret": secret}, status=201)


@router.get("/keys/{key_id}", responses=_FINDS)
async def get_key(request: Request, key_id: str = _KEY_ID) -> JSONResponse:
    key = await asyncio.to_thread(_directory(request).get_key, key_id)
    _may_see(current_actor(request), key)
    return _json(key)


@router.post("/keys/{key_id}/revoke", responses=_WRITES)
async def revoke_key(request: Request, key_id: str = _KEY_ID) -> JSONResponse:
    actor = current_actor(request)
    before, after = await asyncio.to_thread(
        lambda: _directory(request).revoke_key(key_id, by=actor)
    )
    return await _changed(request, "key.revoke", key_id, before, after)


@router.post("/keys/{key_id}/rotate", status_code=201, responses=_WRITES)
async def rotate_key(
    request: Request, key_id: str = _KEY_ID, body: RotateBody | None = Body(None)
) -> JSONResponse:
    actor = current_actor(request)
    overlap_s = (body or RotateBody()).overlap_s
    old, new, secret = await asyncio.to_thread(
        lambda: _directory(request).rotate_key(
            key_id, by=actor, overlap_s=overlap_s, bounds=_bounds(request, actor)
        )
    )
    await _services(request).access.apply_change()
    audited(request, "key.rotate", key_id, after={"retired": old, "replacement": new})
    return _json({**new, "secret": secret, "previous": old}, status=201)


# -- usage ----------------------------------------------------------------------------------


@router.get("/usage", responses=_FINDS)
async def usage(
    request: Request,
    key: str | None = Query(None, max_length=40, pattern=_NO_NUL),
    user: str | None = Query(None, max_length=128, pattern=_NO_NUL),
    team: str | None = Query(None, max_length=128, pattern=_NO_NUL),
    model: str | None = Query(None, max_length=255, pattern=_NO_NUL),
) -> JSONResponse:
    """Current counters and what remains, per limit. Without filters: your own key, user and
    team. Seeing anyone else's needs the directory.read permission."""
    keel = _services(request)
    actor = current_actor(request)
    if key is None and user is None and team is None and model is None:
        key, team = actor.key_id, actor.team
        user = actor.name if _is_keel_user(actor) else None
    elif not role_allows(actor.role, "directory.read") and (
        (key is not None and key != actor.key_id)
        or (user is not None and user != actor.name)
        or (team is not None and team != actor.team)
        or model is not None
    ):
        raise PermissionDeniedError(
            "you can see only your own usage (directory.read shows everyone's)",
            code="insufficient_role",
        )
    limits = keel.policy.usage_limits(key=key, user=user, team=team, model=model)
    return _listing(await keel.quotas.usage(limits))


# -- helpers ----------------------------------------------------------------------------------


def _services(request: Request) -> Services:
    found: Services = request.app.state.keel
    return found


def _directory(request: Request) -> Directory:
    return _services(request).directory


def _bounds(request: Request, actor: Actor) -> KeyBounds:
    grant = _services(request).access.grant(actor.key_id) if actor.key_id else None
    return KeyBounds.of(actor, grant)


def _limits(limits: LimitSet | None) -> dict[str, Any]:
    return {} if limits is None else limits.model_dump(exclude_none=True)


def _own_name(actor: Actor, requested: str | None, verb: str) -> str:
    if not _is_keel_user(actor):
        raise InvalidRequestError(
            f"user: name whose keys to {verb} ({actor.name!r} is not a Keel user)", param="user"
        )
    if requested is not None and requested != actor.name:
        raise PermissionDeniedError(
            f"you can {verb} only your own keys, not those of {requested!r}",
            code="insufficient_role",
        )
    return actor.name


def _is_keel_user(actor: Actor) -> bool:
    """A user or service account of the directory (not an SSO subject or the local user)."""
    return actor.kind in ("user", "service_account")


def _may_see(actor: Actor, key: dict[str, Any]) -> None:
    if role_allows(actor.role, "directory.read") or key["user"] == actor.name:
        return
    raise PermissionDeniedError("you can see only your own keys", code="insufficient_role")


async def _changed(
    request: Request,
    action: str,
    target: str,
    before: dict[str, Any] | None,
    after: dict[str, Any],
    *,
    status: int = 200,
) -> JSONResponse:
    # Applied before answering: once a revocation is acknowledged, the key is refused here.
    await _services(request).access.apply_change()
    audited(request, action, target, before=before, after=after)
    return _json(after, status=status)


def _listing(items: list[dict[str, Any]]) -> JSONResponse:
    return _json({"object": "list", "data": items})


def _json(content: Any, *, status: int = 200) -> JSONResponse:
    return JSONResponse(to_jsonable(content), status_code=status)
