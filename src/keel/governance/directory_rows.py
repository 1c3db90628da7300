"""The directory's rows: how they read back as API objects, the lookups its transactions are
built from, and the checks its inputs pass. Every function takes the caller's connection, so a
`Directory` method stays one transaction however many of them it uses."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Row, insert, select
from sqlalchemy.exc import IntegrityError

from keel.errors import ConflictError, InvalidRequestError, NotFoundError, PermissionDeniedError
from keel.governance import tables as db
from keel.identity import ROLES, Actor

DEFAULT_ORG = "default"
ROUTE_CLASSES = ("inference", "management")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")


# -- rows to API objects --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Names:
    orgs: dict[str, str]
    teams: dict[str, str]
    principals: dict[str, str]

    @classmethod
    def read(cls, connection: Connection) -> Names:
        return cls(
            {row.id: row.name for row in connection.execute(select(db.organizations))},
            {row.id: row.name for row in connection.execute(select(db.teams))},
            {row.id: row.name for row in connection.execute(select(db.principals))},
        )


def org_view(row: Row[Any]) -> dict[str, Any]:
    return {"id": row.id, "object": "organization", "name": row.name, "created_at": row.created_at}


def team_view(row: Row[Any], orgs: dict[str, str]) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "team",
        "name": row.name,
        "org": orgs.get(row.org_id),
        "allowed_regions": (row.policy or {}).get("allowed_regions"),
        "limits": row.limits or {},
        "created_at": row.created_at,
    }


def principal_view(row: Row[Any], names: Names) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "user",
        "name": row.name,
        "kind": row.kind,
        "email": row.email,
        "org": names.orgs.get(row.org_id),
        "team": names.teams.get(row.team_id) if row.team_id else None,
        "role": row.role,
        "limits": row.limits or {},
        "disabled": row.disabled,
        "created_at": row.created_at,
    }


def key_view(row: Row[Any], names: Names, now: datetime | None) -> dict[str, Any]:
    status = "active"
    if row.revoked_at is not None:
        status = "revoked"
    elif row.expires_at is not None and now is not None and aware(row.expires_at) <= now:
        status = "expired"
    return {
        "id": row.id,
        "object": "api_key",
        "name": row.name,
        "prefix": row.prefix,
        "user": names.principals.get(row.principal_id),
        "environment": row.environment,
        "role": row.role,
        "models": row.models,
        "routes": row.routes,
        "ip_allowlist": row.ip_allowlist,
        "limits": row.limits or {},
        "expires_at": row.expires_at,
        "revoked_at": row.revoked_at,
        "rotated_from": row.rotated_from,
        "created_by": row.created_by,
        "created_at": row.created_at,
        "status": status,
    }


# -- lookups and checks ---------------------------------------------------------------------


def insert_unique(
    connection: Connection, table: Any, values: dict[str, Any], conflict: str
) -> None:
    try:
        with connection.begin_nested():
            connection.execute(insert(table).values(values))
    except IntegrityError:
        raise ConflictError(conflict) from None


def org_id_of(connection: Connection, name: str | None) -> str:
    found = connection.scalar(
        select(db.organizations.c.id).where(db.organizations.c.name == (name or DEFAULT_ORG))
    )
    if found is None:
        raise NotFoundError(f"organization {name or DEFAULT_ORG!r} does not exist")
    return str(found)


def team_row(connection: Connection, name: str) -> Row[Any]:
    row = connection.execute(select(db.teams).where(db.teams.c.name == name)).one_or_none()
    if row is None:
        raise NotFoundError(f"team {name!r} does not exist")
    return row


def principal_row(connection: Connection, name: str) -> Row[Any]:
    row = connection.execute(
        select(db.principals).where(db.principals.c.name == name)
    ).one_or_none()
    if row is None:
        raise NotFoundError(f"user {name!r} does not exist")
    return row


def principal_by_id(connection: Connection, principal_id: str) -> Row[Any]:
    return connection.execute(select(db.principals).where(db.principals.c.id == principal_id)).one()


def key_row(connection: Connection, key_id: str) -> Row[Any]:
    row = connection.execute(select(db.api_keys).where(db.api_keys.c.id == key_id)).one_or_none()
    if row is None:
        raise NotFoundError(f"key {key_id!r} does not exist")
    return row


def may_manage_keys_of(actor: Actor, owner: Row[Any]) -> None:
    """Admins manage every key; anyone else only their own."""
    if actor.has_any("admin") or actor.principal_id == owner.id:
        return
    raise PermissionDeniedError(
        f"only an admin can manage the keys of {owner.name!r}", code="insufficient_role"
    )


def checked_name(name: str, field: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidRequestError(
            f"{field}: 1 to 128 letters, digits or . _ @ + -, starting with a letter or digit",
            param=field,
        )
    return name


def checked_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidRequestError(f"role must be one of {', '.join(ROLES)}", param="role")
    return role


def region_list(regions: list[str] | None) -> list[str] | None:
    if regions is None:
        return None
    return sorted({region.strip() for region in regions if region.strip()})


def model_list(models: list[str] | None) -> list[str] | None:
    if models is None:
        return None
    return sorted({model for model in models if model})


def route_classes(routes: list[str] | None) -> list[str]:
    chosen = list(ROUTE_CLASSES) if routes is None else sorted(set(routes))
    unknown = [route for route in chosen if route not in ROUTE_CLASSES]
    if unknown or not chosen:
        raise InvalidRequestError(
            "routes: choose from inference, management (at least one)", param="routes"
        )
    return chosen


def network_list(allowlist: list[str] | None) -> list[str] | None:
    if allowlist is None:
        return None
    networks = []
    for entry in allowlist:
        try:
            networks.append(str(ipaddress.ip_network(entry.strip(), strict=False)))
        except ValueError:
            raise InvalidRequestError(
                f"ip_allowlist: {entry[:64]!r} is not an IP address or CIDR network",
                param="ip_allowlist",
            ) from None
    return networks


def aware(value: datetime) -> datetime:
    # SQLite hands timestamps back without their zone; Keel stores them in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
