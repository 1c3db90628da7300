"""Authentication and authorization on the request path, from an in-memory snapshot.

A bearer credential is one of: an API key (looked up by its SHA-256 in the snapshot), the
bootstrap admin key (`auth.admin_key` / KEEL_ADMIN_KEY), or an OIDC JWT (verified against a
configured issuer's keys). Without one (or with one that is not a Keel key), a server in open
mode (loopback bind, no admin key, `auth.required` unset) treats the caller as the local admin;
any other server answers 401.

The snapshot is rebuilt in a worker thread after a write made through this replica (before the
write is acknowledged); when another replica announces a newer `governance_state.version`
through Redis (`keel.governance.propagation`, with `redis_url`); and, as the fallback, when the
version the poller reads every `auth.refresh_interval_s` moves on. No request waits on the
database.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from keel.errors import AuthenticationError, PermissionDeniedError
from keel.governance.config import AuthConfig, LimitSet
from keel.governance.directory import Directory, DirectoryData, hash_secret
from keel.governance.permissions import Permission, role_allows, route_class
from keel.identity import Actor, role_rank

if TYPE_CHECKING:
    from keel.governance.oidc import OidcVerifier

__all__ = ["LOCAL_ADMIN", "Access", "KeyGrant", "TeamPolicy", "auth_required", "is_loopback"]

log = logging.getLogger("keel.governance")

_MAX_CREDENTIAL = 8192
LOCAL_ADMIN = Actor("local", frozenset({"admin"}), kind="local")
_BOOTSTRAP = "admin-key"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def auth_required(config: AuthConfig, host: str) -> bool:
    """The rule: explicit `auth.required` wins; else an admin key or a non-loopback bind
    requires credentials, and only a loopback server with no admin key stays open."""
    if config.required is not None:
        return config.required
    return config.admin_key is not None or not is_loopback(host)


@dataclass(frozen=True, slots=True)
class TeamPolicy:
    name: str
    allowed_regions: frozenset[str] | None
    limits: LimitSet


@dataclass(frozen=True, slots=True)
class KeyGrant:
    """One usable key as authentication needs it."""

    key_id: str
    principal_id: str
    principal: str
    kind: str
    role: str
    team: str | None
    org: str | None
    environment: str
    models: frozenset[str] | None
    routes: frozenset[str]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None
    expires_at: float | None
    limits: LimitSet


@dataclass(slots=True)
class _Snapshot:
    version: int = -1
    keys: dict[str, KeyGrant] = field(default_factory=dict)  # by secret hash
    by_id: dict[str, KeyGrant] = field(default_factory=dict)
    teams: dict[str, TeamPolicy] = field(default_factory=dict)  # by name
    principal_limits: dict[str, LimitSet] = field(default_factory=dict)  # by name


class Access:
    def __init__(
        self,
        directory: Directory,
        config: AuthConfig,
        *,
        host: str,
        oidc: OidcVerifier | None = None,
    ) -> None:
        self.directory = directory
        self.config = config
        self.required = auth_required(config, host)
        self.oidc = oidc
        admin_key = config.admin_key.get_secret_value() if config.admin_key else None
        self._admin_hash = hash_secret(admin_key) if admin_key else None
        self._snapshot = _Snapshot()
        self._poller: asyncio.Task[None] | None = None
        self._pending: asyncio.Task[None] | None = None
        self._dirty = False

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.directory.ensure_default_org)
        await self.refresh()
        if self.oidc is not None:
            await self.oidc.start()
        self._poller = asyncio.create_task(self._poll(), name="keel-access-snapshot")

    async def close(self) -> None:
        for task in (self._poller, self._pending):
            if task is not None:
                task.cancel()
        if self.oidc is not None:
            await self.oidc.aclose()

    async def refresh(self) -> None:
        data = await asyncio.to_thread(self.directory.load)
        # Loads can finish out of order (the poller's and a write's): never go back to an
        # older state, which could bring a revoked key back for a moment.
        if data.version >= self._snapshot.version:
            self._snapshot = _build_snapshot(data)

    async def apply_change(self) -> None:
        """A write went through this replica: rebuild the snapshot before acknowledging it.
        Writes landing during a rebuild get one more, so the last one always reads them."""
        self._dirty = True
        if self._pending is None or self._pending.done():
            self._pending = asyncio.create_task(self._reload_until_clean())
        try:
            await asyncio.shield(self._pending)
        except Exception as exc:  # the write stands; the poller will catch up
            log.error("reloading keys and policies failed: %s", type(exc).__name__)

    async def changed_elsewhere(self, version: int | None) -> None:
        """Another replica announced a write that left the directory at `version`; None when
        announcements may have been missed. Reload unless this snapshot is already there.
        Not through `apply_change`: a write waiting there must not wait for this reload too
        (this replica hears its own announcements)."""
        if version is None:
            version = await asyncio.to_thread(self.directory.version)
            if version == self._snapshot.version:
                return
        elif version <= self._snapshot.version:
            return
        await self.refresh()

    async def _reload_until_clean(self) -> None:
        while self._dirty:
            self._dirty = False
            await self.refresh()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.config.refresh_interval_s)
            try:
                version = await asyncio.to_thread(self.directory.version)
                if version != self._snapshot.version:
                    await self.refresh()
            except Exception as exc:  # keep serving from the last snapshot
                log.warning("checking for key and policy changes failed: %s", type(exc).__name__)

    # -- the request path ---------------------------------------------------------------------

    async def authenticate(self, headers: Mapping[str, str], client_ip: str | None) -> Actor:
        credential = _bearer(headers)
        if credential is None:
            if not self.required:
                return LOCAL_ADMIN if client_ip is None else _local_admin_at(client_ip)
            raise AuthenticationError(
                "no API key: send Authorization: Bearer <key>",
                code="missing_api_key",
                headers={"www-authenticate": "Bearer"},
            )
        if self.oidc is not None and self.oidc.enabled and self.oidc.looks_like_jwt(credential):
            return await self.oidc.verify(credential, source_ip=client_ip)
        digest = hash_secret(credential)
        if self._admin_hash is not None and hmac.compare_digest(digest, self._admin_hash):
            return Actor(_BOOTSTRAP, frozenset({"admin"}), kind="bootstrap", source_ip=client_ip)
        grant = self._snapshot.keys.get(digest)
        if grant is None and not self.required:
            # Open mode: OpenAI SDKs insist on some api_key; one that isn't a Keel key is the
            # local user like no key at all. Keel keys still identify their owner.
            return _local_admin_at(client_ip) if client_ip else LOCAL_ADMIN
        if grant is None:
            raise AuthenticationError(
                "the API key is not valid (unknown or revoked)",
                headers={"www-authenticate": "Bearer"},
            )
        if grant.expires_at is not None and time.time() >= grant.expires_at:
            raise AuthenticationError(
                f"the API key {grant.key_id} has expired", code="expired_api_key"
            )
        if grant.networks is not None and not _allowed_from(client_ip, grant.networks):
            raise PermissionDeniedError(
                f"the API key {grant.key_id} may not be used from this address",
                code="ip_not_allowed",
            )
        return Actor(
            grant.principal,
            frozenset({grant.role}),
            kind=grant.kind,  # type: ignore[arg-type]
            principal_id=grant.principal_id,
            team=grant.team,
            org=grant.org,
            key_id=grant.key_id,
            environment=grant.environment,  # type: ignore[arg-type]
            allowed_models=grant.models,
            source_ip=client_ip,
        )

    def still_valid(self, actor: Actor) -> None:
        """Raise 401 if `actor`'s key was revoked, disabled or expired since the request was
        authenticated (a body can take a while to arrive): nothing acts on a dead key."""
        if actor.key_id is None:
            return
        grant = self._snapshot.by_id.get(actor.key_id)
        if grant is None:
            raise AuthenticationError(f"the API key {actor.key_id} is no longer valid")
        if grant.expires_at is not None and time.time() >= grant.expires_at:
            raise AuthenticationError(
                f"the API key {actor.key_id} has expired", code="expired_api_key"
            )

    def authorize(self, actor: Actor, permission: Permission | None, what: str) -> None:
        """Raise 403 unless `actor` may use a route needing `permission` (`what` names it)."""
        if not role_allows(actor.role, permission):
            raise PermissionDeniedError(
                f"{what} needs the {permission or 'admin'} permission, which role "
                f"{actor.role!r} does not have",
                code="insufficient_role",
            )
        if actor.key_id is not None:
            grant_routes = self._key_routes(actor.key_id)
            wanted = route_class(permission)
            if grant_routes is not None and wanted not in grant_routes:
                raise PermissionDeniedError(
                    f"the API key {actor.key_id} is limited to "
                    f"{', '.join(sorted(grant_routes))} routes; {what} is a {wanted} route",
                    code="key_scope",
                )

    # -- policy lookups for the gateway -------------------------------------------------------

    def team_policy(self, team: str | None) -> TeamPolicy | None:
        return None if team is None else self._snapshot.teams.get(team)

    def grant(self, key_id: str) -> KeyGrant | None:
        return self._snapshot.by_id.get(key_id)

    def principal_limits(self, name: str) -> LimitSet | None:
        return self._snapshot.principal_limits.get(name)

    def _key_routes(self, key_id: str) -> frozenset[str] | None:
        grant = self._snapshot.by_id.get(key_id)
        return None if grant is None else grant.routes


def _bearer(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization")
    if value is None:
        return None
    if len(value) > _MAX_CREDENTIAL:
        raise AuthenticationError("the Authorization header is too long", code="malformed_token")
    scheme, _, credential = value.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential or " " in credential:
        raise AuthenticationError(
            "the Authorization header must be 'Bearer <key>'", code="malformed_token"
        )
    return credential


def _allowed_from(
    client_ip: str | None,
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
) -> bool:
    if client_ip is None:
        return False
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack socket's view of an IPv4 client
    return any(address in network for network in networks)


def _local_admin_at(client_ip: str) -> Actor:
    return Actor("local", frozenset({"admin"}), kind="local", source_ip=client_ip)


def _build_snapshot(data: DirectoryData) -> _Snapshot:
    teams = {
        row["name"]: TeamPolicy(
            row["name"],
            _frozen((row["policy"] or {}).get("allowed_regions")),
            LimitSet.model_validate(row["limits"] or {}),
        )
        for row in data.teams.values()
    }
    principal_limits = {
        row["name"]: LimitSet.model_validate(row["limits"] or {})
        for row in data.principals.values()
    }
    keys: dict[str, KeyGrant] = {}
    for row in data.keys:
        owner = data.principals.get(row["principal_id"])
        if owner is None or owner["disabled"]:
            continue
        role = row["role"] or owner["role"]
        if role_rank(role) < role_rank(owner["role"]):
            role = owner["role"]  # a key never outranks its owner, even after a demotion
        team = data.teams.get(owner["team_id"]) if owner["team_id"] else None
        keys[row["secret_hash"]] = KeyGrant(
            key_id=row["id"],
            principal_id=owner["id"],
            principal=owner["name"],
            kind=owner["kind"],
            role=role,
            team=team["name"] if team else None,
            org=data.orgs.get(owner["org_id"]),
            environment=row["environment"],
            models=_frozen(row["models"]),
            routes=frozenset(row["routes"]),
            networks=(
                None
                if row["ip_allowlist"] is None
                else tuple(ipaddress.ip_network(entry) for entry in row["ip_allowlist"])
            ),
            expires_at=_epoch(row["expires_at"]),
            limits=LimitSet.model_validate(row["limits"] or {}),
        )
    by_id = {grant.key_id: grant for grant in keys.values()}
    return _Snapshot(data.version, keys, by_id, teams, principal_limits)


def _frozen(values: list[str] | None) -> frozenset[str] | None:
    return None if values is None else frozenset(values)


def _epoch(value: datetime | None) -> float | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
