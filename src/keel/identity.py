"""Who is acting. Authentication (`keel.governance.access`) turns a bearer key, an OIDC token or
the open loopback mode into an `Actor`; everything downstream (permissions, quotas, policies,
the registry's approvals, the audit log) reads only this."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["ROLES", "Actor", "Environment", "PrincipalKind", "role_rank"]

# Highest first. Registry approvals need `maintainer` or above.
ROLES = ("admin", "maintainer", "developer", "viewer")

Environment = Literal["sandbox", "production"]
PrincipalKind = Literal["user", "service_account", "oidc", "local", "bootstrap"]


def role_rank(role: str) -> int:
    """0 for admin, growing as roles get weaker."""
    return ROLES.index(role)


@dataclass(frozen=True, slots=True)
class Actor:
    name: str
    roles: frozenset[str] = field(default_factory=lambda: frozenset({"admin"}))
    kind: PrincipalKind = "local"
    principal_id: str | None = None
    team: str | None = None
    org: str | None = None
    key_id: str | None = None
    environment: Environment = "production"
    # None: every model. Otherwise the gateway model ids / groups / registry names it may call.
    allowed_models: frozenset[str] | None = None
    source_ip: str | None = None

    def has_any(self, *roles: str) -> bool:
        return not self.roles.isdisjoint(roles)

    @property
    def role(self) -> str:
        """The strongest role held."""
        return min(self.roles, key=role_rank) if self.roles else "viewer"
