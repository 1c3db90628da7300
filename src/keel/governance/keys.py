"""What a new API key may hold, given who creates it.

A key is never wider than the credential that made it: a caller acting through a narrowed key
(a weaker role, some models, sandbox, inference routes, an IP allow-list, an expiry, quota
limits) can only create or rotate keys inside those same bounds, so narrowing a key can't be
undone by minting another. Only admins set a key's quota limits; a key made by anyone else
carries the limits of the key that made it.

The environment binds everyone but admins, who may create keys for either environment whatever
the credential they act through: they govern both already (they promote registry versions to
production and manage every user's keys), so the bound would protect nothing, and it would leave
the admin key created at first start, a production key, unable to make sandbox keys.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from keel.errors import PermissionDeniedError
from keel.identity import Actor, role_rank

if TYPE_CHECKING:
    from keel.governance.access import KeyGrant

__all__ = ["KeyBounds", "KeyRequest"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class KeyRequest:
    """The grants asked for a new key; None means "not narrowed" (or "inherit")."""

    role: str | None = None
    environment: str | None = None
    models: list[str] | None = None
    routes: list[str] | None = None
    ip_allowlist: list[str] | None = None
    expires_at: datetime | None = None
    limits: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class KeyBounds:
    role: str
    environment: str | None = None
    models: frozenset[str] | None = None
    routes: frozenset[str] | None = None
    networks: tuple[Network, ...] | None = None
    expires_at: datetime | None = None
    limits: Mapping[str, Any] | None = None
    may_set_limits: bool = True
    may_choose_environment: bool = True

    @classmethod
    def of(cls, actor: Actor, grant: KeyGrant | None) -> KeyBounds:
        """The bounds of `actor`: its key's grants, or just its role (bootstrap admin key,
        SSO token, the local user)."""
        is_admin = actor.role == "admin"
        if grant is None:
            sandbox = actor.kind == "oidc" and actor.environment == "sandbox"
            return cls(
                actor.role,
                "sandbox" if sandbox else None,
                may_set_limits=is_admin,
                may_choose_environment=is_admin,
            )
        expires_at = (
            None if grant.expires_at is None else datetime.fromtimestamp(grant.expires_at, UTC)
        )
        return cls(
            role=grant.role,
            environment=grant.environment,
            models=grant.models,
            routes=grant.routes,
            networks=grant.networks,
            expires_at=expires_at,
            limits=grant.limits.model_dump(exclude_none=True),
            may_set_limits=is_admin,
            may_choose_environment=is_admin,
        )

    def narrow(self, request: KeyRequest, *, limits_are_kept: bool = False) -> KeyRequest:
        """`request` with what it leaves open filled from these bounds; 403 where it asks for
        more. `limits_are_kept` (a rotation) lets a key keep the limits it already had."""
        if request.role is not None and role_rank(request.role) < role_rank(self.role):
            _refuse(f"role: a key can't be stronger than your own role ({self.role})", "role")
        # Each environment reaches what the other can't (sandbox: unreleased registry versions;
        # production: production traffic), so a key makes keys of its own environment only,
        # unless it is an admin's. Left open, the new key takes the credential's environment.
        environment = request.environment or self.environment or "production"
        if (
            self.environment is not None
            and environment != self.environment
            and not self.may_choose_environment
        ):
            _refuse(
                f"environment: a {self.environment} credential creates {self.environment} keys",
                "environment",
            )
        models = _within(request.models, self.models, "models")
        routes = _within(request.routes, self.routes, "routes")
        networks = self._networks(request.ip_allowlist)
        expires_at = request.expires_at
        if self.expires_at is not None:
            if expires_at is not None and expires_at > self.expires_at:
                _refuse("expires_at: a key can't outlive the key that creates it", "expires_at")
            expires_at = expires_at or self.expires_at
        limits = request.limits
        if not self.may_set_limits and not limits_are_kept:
            if limits:
                _refuse("limits: only an admin sets a key's quota limits", "limits")
            limits = self.limits
        return replace(
            request,
            environment=environment,
            models=models,
            routes=routes,
            ip_allowlist=networks,
            expires_at=expires_at,
            limits=limits,
        )

    def _networks(self, requested: list[str] | None) -> list[str] | None:
        if self.networks is None:
            return requested
        if requested is None:
            return [str(network) for network in self.networks]
        for entry in requested:
            try:
                network = ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                continue  # the directory reports malformed entries, naming the field
            if not any(
                network.version == bound.version and network.subnet_of(bound)  # type: ignore[arg-type]
                for bound in self.networks
            ):
                _refuse(
                    "ip_allowlist: a key can't be usable from more places than yours",
                    "ip_allowlist",
                )
        return requested


def _within(
    requested: list[str] | None, bound: frozenset[str] | None, field: str
) -> list[str] | None:
    if bound is None:
        return requested
    if requested is None:
        return sorted(bound)
    if not set(requested) <= bound:
        _refuse(
            f"{field}: a key can't reach more {field} than yours ({', '.join(sorted(bound))})",
            field,
        )
    return requested


def _refuse(message: str, field: str) -> None:
    raise PermissionDeniedError(message, param=field, code="key_bounds")
