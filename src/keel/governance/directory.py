"""Organizations, teams, users, service accounts and their API keys, in the database.

Synchronous like the registry: the server calls each method through `asyncio.to_thread`, each
method is one transaction, and every write bumps `governance_state.version` in that same
transaction so every replica's in-memory snapshot (`keel.governance.access`) notices it.
Writes return `(before, after)` so the caller can audit them.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import re
import secrets
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from keel.errors import ConflictError, InvalidRequestError, NotFoundError, PermissionDeniedError
from keel.governance import tables as db
from keel.governance.keys import KeyBounds, KeyRequest
from keel.identity import ROLES, Actor, role_rank
from keel.store.database import Database

__all__ = [
    "DEFAULT_ORG",
    "Change",
    "Directory",
    "DirectoryData",
    "hash_secret",
    "key_prefix",
    "new_secret",
]

DEFAULT_ORG = "default"
ROUTE_CLASSES = ("inference", "management")
ENVIRONMENTS = ("production", "sandbox")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")
_PREFIX_LENGTH = 16

Change = tuple[dict[str, Any] | None, dict[str, Any]]


def new_secret(environment: str) -> str:
    """`keel_sk_…` for production keys, `keel_sb_…` for sandbox ones: 256 random bits."""
    marker = "sk" if environment == "production" else "sb"
    return f"keel_{marker}_{secrets.token_urlsafe(32)}"


def hash_secret(secret: str) -> str:
    # A fast hash is right here: the secret is 256 random bits, so there is nothing to guess.
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def key_prefix(secret: str) -> str:
    return secret[:_PREFIX_LENGTH]


@dataclass(frozen=True, slots=True)
class DirectoryData:
    """Everything authentication and policy need, read in one transaction."""

    version: int
    keys: list[dict[str, Any]]
    principals: dict[str, dict[str, Any]]
    teams: dict[str, dict[str, Any]]  # by id
    orgs: dict[str, str]  # id -> name


class Directory:
    def __init__(
        self, database: Database, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.database = database
        self._clock = clock

    # -- reading --------------------------------------------------------------------------

    def version(self) -> int:
        with self.database.engine.connect() as connection:
            found = connection.scalar(select(db.governance_state.c.version))
        return int(found or 0)

    def load(self) -> DirectoryData:
        with self.database.engine.connect() as connection:
            version = int(connection.scalar(select(db.governance_state.c.version)) or 0)
            orgs = {row.id: row.name for row in connection.execute(select(db.organizations))}
            teams = {row.id: dict(row._mapping) for row in connection.execute(select(db.teams))}
            principals = {
                row.id: dict(row._mapping) for row in connection.execute(select(db.principals))
            }
            keys = [
                dict(row._mapping)
                for row in connection.execute(
                    select(db.api_keys).where(db.api_keys.c.revoked_at.is_(None))
                )
            ]
        return DirectoryData(version, keys, principals, teams, orgs)

    def list_orgs(self) -> list[dict[str, Any]]:
        with self.database.engine.connect() as connection:
            rows = connection.execute(select(db.organizations).order_by(db.organizations.c.name))
            return [_org(row) for row in rows]

    def list_teams(self) -> list[dict[str, Any]]:
        with self.database.engine.connect() as connection:
            rows = connection.execute(select(db.teams).order_by(db.teams.c.name)).all()
            return [_team(row, self._org_names(connection)) for row in rows]

    def get_team(self, name: str) -> dict[str, Any]:
        with self.database.engine.connect() as connection:
            return _team(_team_row(connection, name), self._org_names(connection))

    def list_users(
        self, *, team: str | None = None, kind: str | None = None
    ) -> list[dict[str, Any]]:
        with self.database.engine.connect() as connection:
            query = select(db.principals).order_by(db.principals.c.name)
            if team is not None:
                query = query.where(db.principals.c.team_id == _team_row(connection, team).id)
            if kind is not None:
                query = query.where(db.principals.c.kind == kind)
            names = _Names.read(connection)
            return [_principal(row, names) for row in connection.execute(query)]

    def get_user(self, name: str) -> dict[str, Any]:
        with self.database.engine.connect() as connection:
            return _principal(_principal_row(connection, name), _Names.read(connection))

    def list_keys(self, *, user: str | None = None) -> list[dict[str, Any]]:
        with self.database.engine.connect() as connection:
            query = select(db.api_keys).order_by(db.api_keys.c.created_at)
            if user is not None:
                query = query.where(
                    db.api_keys.c.principal_id == _principal_row(connection, user).id
                )
            names = _Names.read(connection)
            now = self._clock()
            return [_key(row, names, now) for row in connection.execute(query)]

    def get_key(self, key_id: str) -> dict[str, Any]:
        with self.database.engine.connect() as connection:
            return _key(_key_row(connection, key_id), _Names.read(connection), self._clock())

    def has_admin(self) -> bool:
        with self.database.engine.connect() as connection:
            found = connection.scalar(
                select(func.count())
                .select_from(db.principals)
                .where(db.principals.c.role == "admin", db.principals.c.disabled.is_(False))
            )
        return bool(found)

    # -- writing --------------------------------------------------------------------------

    def ensure_default_org(self) -> None:
        with self._writing() as connection:
            if connection.scalar(select(db.organizations.c.id).limit(1)) is None:
                with contextlib.suppress(ConflictError):  # a replica starting alongside won
                    self._insert_org(connection, DEFAULT_ORG)

    def create_org(self, name: str) -> Change:
        with self._writing() as connection:
            return None, _org(self._insert_org(connection, _checked(name, "name")))

    def create_team(
        self,
        name: str,
        *,
        org: str | None = None,
        allowed_regions: list[str] | None = None,
        limits: Mapping[str, Any] | None = None,
    ) -> Change:
        with self._writing() as connection:
            org_id = _org_id(connection, org or DEFAULT_ORG)
            values = {
                "id": f"team_{uuid.uuid4().hex[:20]}",
                "org_id": org_id,
                "name": _checked(name, "name"),
                "policy": {"allowed_regions": _regions(allowed_regions)},
                "limits": dict(limits or {}),
                "created_at": self._clock(),
            }
            _insert(connection, db.teams, values, f"team {name!r} already exists")
            return None, _team(_team_row(connection, name), self._org_names(connection))

    def update_team(self, name: str, changes: Mapping[str, Any]) -> Change:
        with self._writing() as connection:
            row = _team_row(connection, name)
            before = _team(row, self._org_names(connection))
            values: dict[str, Any] = {}
            if "allowed_regions" in changes:
                values["policy"] = {
                    **row.policy,
                    "allowed_regions": _regions(changes["allowed_regions"]),
                }
            if "limits" in changes:
                values["limits"] = dict(changes["limits"] or {})
            if values:
                connection.execute(update(db.teams).where(db.teams.c.id == row.id).values(values))
            return before, _team(_team_row(connection, name), self._org_names(connection))

    def create_user(
        self,
        name: str,
        *,
        kind: str = "user",
        role: str = "developer",
        team: str | None = None,
        org: str | None = None,
        email: str | None = None,
        limits: Mapping[str, Any] | None = None,
    ) -> Change:
        if kind not in ("user", "service_account"):
            raise InvalidRequestError("kind must be user or service_account", param="kind")
        with self._writing() as connection:
            team_row = _team_row(connection, team) if team is not None else None
            org_id = team_row.org_id if team_row is not None else _org_id(connection, org)
            values = {
                "id": f"{'usr' if kind == 'user' else 'sa'}_{uuid.uuid4().hex[:20]}",
                "kind": kind,
                "name": _checked(name, "name"),
                "email": email,
                "org_id": org_id,
                "team_id": team_row.id if team_row is not None else None,
                "role": _role(role),
                "limits": dict(limits or {}),
                "disabled": False,
                "created_at": self._clock(),
            }
            _insert(connection, db.principals, values, f"user {name!r} already exists")
            return None, _principal(_principal_row(connection, name), _Names.read(connection))

    def update_user(self, name: str, changes: Mapping[str, Any]) -> Change:
        with self._writing() as connection:
            row = _principal_row(connection, name)
            names = _Names.read(connection)
            before = _principal(row, names)
            values: dict[str, Any] = {}
            for field in ("email", "disabled"):
                if field in changes:
                    values[field] = changes[field]
            if "role" in changes:
                values["role"] = _role(changes["role"])
            if "limits" in changes:
                values["limits"] = dict(changes["limits"] or {})
            if "team" in changes:
                team = changes["team"]
                values["team_id"] = None if team is None else _team_row(connection, team).id
            if values:
                connection.execute(
                    update(db.principals).where(db.principals.c.id == row.id).values(values)
                )
            return before, _principal(_principal_row(connection, name), names)

    def create_key(
        self,
        user: str,
        *,
        name: str,
        created_by: Actor,
        environment: str | None = None,
        role: str | None = None,
        models: list[str] | None = None,
        routes: list[str] | None = None,
        ip_allowlist: list[str] | None = None,
        expires_at: datetime | None = None,
        limits: Mapping[str, Any] | None = None,
        rotated_from: str | None = None,
        bounds: KeyBounds | None = None,
        limits_are_kept: bool = False,
    ) -> tuple[dict[str, Any], str]:
        """A new key for `user`: its description and the secret, which is never seen again.
        With `bounds` (the creator's own grants), nothing in it may be wider than them."""
        if role is not None:
            _role(role)
        asked = KeyRequest(role, environment, models, routes, ip_allowlist, expires_at, limits)
        if bounds is not None:
            asked = bounds.narrow(asked, limits_are_kept=limits_are_kept)
        environment = asked.environment or "production"
        if environment not in ENVIRONMENTS:
            raise InvalidRequestError(
                "environment must be production or sandbox", param="environment"
            )
        role, expires_at = asked.role, asked.expires_at
        with self._writing() as connection:
            owner = _principal_row(connection, user)
            _may_manage_keys_of(created_by, owner)
            if role is None and role_rank(created_by.role) > role_rank(owner.role):
                role = created_by.role  # never more than the creator holds
            if role is not None:
                if role_rank(role) < role_rank(owner.role):
                    raise InvalidRequestError(
                        f"role: a key can't hold more than its owner's role ({owner.role})",
                        param="role",
                    )
                if role_rank(role) < role_rank(created_by.role):
                    raise PermissionDeniedError(
                        f"role: you can't create a key stronger than your own role "
                        f"({created_by.role})",
                        code="insufficient_role",
                    )
            if expires_at is not None and expires_at <= self._clock():
                raise InvalidRequestError("expires_at must be in the future", param="expires_at")
            secret = new_secret(environment)
            values = {
                "id": f"key_{uuid.uuid4().hex[:20]}",
                "principal_id": owner.id,
                "name": name,
                "prefix": key_prefix(secret),
                "secret_hash": hash_secret(secret),
                "environment": environment,
                "role": role,
                "models": _model_list(asked.models),
                "routes": _route_classes(asked.routes),
                "ip_allowlist": _networks(asked.ip_allowlist),
                "limits": dict(asked.limits or {}),
                "expires_at": expires_at,
                "revoked_at": None,
                "rotated_from": rotated_from,
                "created_by": created_by.name,
                "created_at": self._clock(),
            }
            connection.execute(insert(db.api_keys).values(values))
            return _key(_key_row(connection, values["id"]), _Names.read(connection), None), secret

    def revoke_key(self, key_id: str, *, by: Actor) -> Change:
        with self._writing() as connection:
            row = _key_row(connection, key_id)
            _may_manage_keys_of(by, _principal_by_id(connection, row.principal_id))
            names = _Names.read(connection)
            before = _key(row, names, self._clock())
            if row.revoked_at is None:
                connection.execute(
                    update(db.api_keys)
                    .where(db.api_keys.c.id == key_id)
                    .values(revoked_at=self._clock())
                )
            return before, _key(_key_row(connection, key_id), names, self._clock())

    def rotate_key(
        self, key_id: str, *, by: Actor, overlap_s: int, bounds: KeyBounds | None = None
    ) -> tuple[dict[str, Any], dict[str, Any], str]:
        """A new key with the same grants; the old one keeps working for `overlap_s` seconds.
        Returns (old key after, new key, new secret)."""
        with self.database.engine.connect() as connection:
            old = _key_row(connection, key_id)
            owner = _principal_by_id(connection, old.principal_id)
        _may_manage_keys_of(by, owner)  # before saying anything about someone else's key
        if old.revoked_at is not None:
            raise ConflictError(f"key {key_id} is revoked; create a new one instead")
        now = self._clock()
        if old.expires_at is not None and _aware(old.expires_at) <= now:
            raise ConflictError(f"key {key_id} has expired; create a new one instead")
        lifetime = None
        if old.expires_at is not None:
            lifetime = _aware(old.expires_at) - _aware(old.created_at)
        expires_at = now + lifetime if lifetime is not None else None
        if bounds is not None and bounds.expires_at is not None:
            # A key with an expiry can't extend itself by rotating: the replacement ends when
            # the credential rotating it does, at the latest.
            expires_at = min(expires_at or bounds.expires_at, bounds.expires_at)
        new_key, secret = self.create_key(
            owner.name,
            name=old.name,
            created_by=by,
            environment=old.environment,
            role=_rotated_role(old.role, owner.role, by),
            models=old.models,
            routes=old.routes,
            ip_allowlist=old.ip_allowlist,
            expires_at=expires_at,
            limits=old.limits,
            rotated_from=old.id,
            bounds=bounds,
            limits_are_kept=True,
        )
        retire_at = now + timedelta(seconds=overlap_s)
        with self._writing() as connection:
            current = _key_row(connection, key_id)
            if current.expires_at is None or _aware(current.expires_at) > retire_at:
                connection.execute(
                    update(db.api_keys)
                    .where(db.api_keys.c.id == key_id)
                    .values(revoked_at=now if overlap_s == 0 else None, expires_at=retire_at)
                )
            old_after = _key(_key_row(connection, key_id), _Names.read(connection), now)
        return old_after, new_key, secret

    # -- helpers --------------------------------------------------------------------------

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        with self.database.engine.begin() as connection:
            yield connection
            connection.execute(
                update(db.governance_state)
                .where(db.governance_state.c.id == 1)
                .values(version=db.governance_state.c.version + 1)
            )

    def _insert_org(self, connection: Connection, name: str) -> Row[Any]:
        values = {"id": f"org_{uuid.uuid4().hex[:20]}", "name": name, "created_at": self._clock()}
        _insert(connection, db.organizations, values, f"organization {name!r} already exists")
        return connection.execute(
            select(db.organizations).where(db.organizations.c.id == values["id"])
        ).one()

    @staticmethod
    def _org_names(connection: Connection) -> dict[str, str]:
        return {row.id: row.name for row in connection.execute(select(db.organizations))}


# -- rows to API objects --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Names:
    orgs: dict[str, str]
    teams: dict[str, str]
    principals: dict[str, str]

    @classmethod
    def read(cls, connection: Connection) -> _Names:
        return cls(
            {row.id: row.name for row in connection.execute(select(db.organizations))},
            {row.id: row.name for row in connection.execute(select(db.teams))},
            {row.id: row.name for row in connection.execute(select(db.principals))},
        )


def _org(row: Row[Any]) -> dict[str, Any]:
    return {"id": row.id, "object": "organization", "name": row.name, "created_at": row.created_at}


def _team(row: Row[Any], orgs: dict[str, str]) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "team",
        "name": row.name,
        "org": orgs.get(row.org_id),
        "allowed_regions": (row.policy or {}).get("allowed_regions"),
        "limits": row.limits or {},
        "created_at": row.created_at,
    }


def _principal(row: Row[Any], names: _Names) -> dict[str, Any]:
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


def _key(row: Row[Any], names: _Names, now: datetime | None) -> dict[str, Any]:
    status = "active"
    if row.revoked_at is not None:
        status = "revoked"
    elif row.expires_at is not None and now is not None and _aware(row.expires_at) <= now:
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


def _insert(connection: Connection, table: Any, values: dict[str, Any], conflict: str) -> None:
    try:
        with connection.begin_nested():
            connection.execute(insert(table).values(values))
    except IntegrityError:
        raise ConflictError(conflict) from None


def _org_id(connection: Connection, name: str | None) -> str:
    found = connection.scalar(
        select(db.organizations.c.id).where(db.organizations.c.name == (name or DEFAULT_ORG))
    )
    if found is None:
        raise NotFoundError(f"organization {name or DEFAULT_ORG!r} does not exist")
    return str(found)


def _team_row(connection: Connection, name: str) -> Row[Any]:
    row = connection.execute(select(db.teams).where(db.teams.c.name == name)).one_or_none()
    if row is None:
        raise NotFoundError(f"team {name!r} does not exist")
    return row


def _principal_row(connection: Connection, name: str) -> Row[Any]:
    row = connection.execute(
        select(db.principals).where(db.principals.c.name == name)
    ).one_or_none()
    if row is None:
        raise NotFoundError(f"user {name!r} does not exist")
    return row


def _principal_by_id(connection: Connection, principal_id: str) -> Row[Any]:
    return connection.execute(select(db.principals).where(db.principals.c.id == principal_id)).one()


def _key_row(connection: Connection, key_id: str) -> Row[Any]:
    row = connection.execute(select(db.api_keys).where(db.api_keys.c.id == key_id)).one_or_none()
    if row is None:
        raise NotFoundError(f"key {key_id!r} does not exist")
    return row


def _may_manage_keys_of(actor: Actor, owner: Row[Any]) -> None:
    """Admins manage every key; anyone else only their own."""
    if actor.has_any("admin") or actor.principal_id == owner.id:
        return
    raise PermissionDeniedError(
        f"only an admin can manage the keys of {owner.name!r}", code="insufficient_role"
    )


def _checked(name: str, field: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidRequestError(
            f"{field}: 1 to 128 letters, digits or . _ @ + -, starting with a letter or digit",
            param=field,
        )
    return name


def _role(role: str) -> str:
    if role not in ROLES:
        raise InvalidRequestError(f"role must be one of {', '.join(ROLES)}", param="role")
    return role


def _regions(regions: list[str] | None) -> list[str] | None:
    if regions is None:
        return None
    return sorted({region.strip() for region in regions if region.strip()})


def _model_list(models: list[str] | None) -> list[str] | None:
    if models is None:
        return None
    return sorted({model for model in models if model})


def _route_classes(routes: list[str] | None) -> list[str]:
    chosen = list(ROUTE_CLASSES) if routes is None else sorted(set(routes))
    unknown = [route for route in chosen if route not in ROUTE_CLASSES]
    if unknown or not chosen:
        raise InvalidRequestError(
            "routes: choose from inference, management (at least one)", param="routes"
        )
    return chosen


def _networks(allowlist: list[str] | None) -> list[str] | None:
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


def _aware(value: datetime) -> datetime:
    # SQLite hands timestamps back without their zone; Keel stores them in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _rotated_role(role: str | None, owner_role: str, by: Actor) -> str | None:
    """The replacement's role: the old key's, clamped to its owner's current role. A key that
    follows its owner's role can only be rotated by a credential at least that strong; a
    weaker one would quietly weaken it."""
    if role is None:
        if role_rank(by.role) > role_rank(owner_role):
            raise PermissionDeniedError(
                f"role: this key acts with its owner's role ({owner_role}), stronger than yours",
                param="role",
                code="key_bounds",
            )
        return None
    return role if role_rank(role) >= role_rank(owner_role) else None
