"""Who is acting. The seam identity plugs into: today the server builds an `Actor` from the
`x-keel-actor` header (trusted only because Keel has no authentication yet and binds to
loopback by default); the governance work replaces that with API keys and SSO, and every
consumer of `Actor` stays as it is."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ROLES", "Actor"]

# Highest first. Registry approvals need `maintainer` or above.
ROLES = ("admin", "maintainer", "developer", "viewer")


@dataclass(frozen=True, slots=True)
class Actor:
    name: str
    roles: frozenset[str] = field(default_factory=lambda: frozenset({"admin"}))

    def has_any(self, *roles: str) -> bool:
        return not self.roles.isdisjoint(roles)
