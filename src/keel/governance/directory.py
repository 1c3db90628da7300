"""Organizations, teams, users, service accounts and their API keys, in the database.

Synchronous like the registry: the server calls each method through `asyncio.to_thread`, each
method is one transaction, and every write bumps `governance_state.version` in that same
transaction so every replica's in-memory snapshot (`keel.governance.access`) notices it. Once
a write commits, `on_commit` is told the new version (the server announces it to the other
replicas through Redis, `keel.governance.propagation`). Writes return `(before, after)` so the
caller can audit them.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, func, insert, select, update

from keel.errors import ConflictError, InvalidRequestError, PermissionDeniedError
from keel.governance import tables as db
from keel.governance.directory_rows import (
    DEFAULT_ORG,
    Names,
    aware,
    checked_name,
    checked_role,
    insert_unique,
    key_row,
    key_view,
    may_manage_keys_of,
    model_list,
    network_list,
    org_id_of,
    org_view,
    principal_by_id,
    principal_row,
    principal_view,
    region_list,
    route_classes,
    team_row,
    team_view,
)
from keel.governance.keys import KeyBounds, KeyRequest
from keel.identity import Actor, role_rank
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

ENVIRONMENTS = ("production", "sandbox")
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
        self,
        database: Database,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_commit: Callable[[int], None] | None = None,
    ) -> None:
        self.database = database
        self._clock = clock
        self._on_commit = on_commit

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
            return [org_view(row) for row in rows]

    def list_teams(self) -> list[dict[str, Any]]:
        with self.database.engine.connect() as connection:
            rows = connection.execute(select(db.teams).order_by(db.teams.c.name)).all()
            return [team_view(row, self._org_names(connection)) for row in rows]

    def get_team(self, name: str) -> dict[str, Any]:
        with self.database.engine.connect() as connection:
            return team_view(team_row(connection, name), self._org_names(connection))

    def list_users(
        self, *, team: str | None = None, kind: str | None = None
    ) -> list[dict[str, Any]]:
        with self.database.engine.connect() as connection:
            query = select(db.principals).order_by(db.principals.c.name)
            if team is not None:
                query = query.where(db.principals.c.team_id == team_row(connection, team).id)
            if kind is not None:
                query = query.where(db.principals.c.kind == kind)
            names = Names.read(connection)
            return [principal_view(row, names) for row in connection.execute(query)]

    def get_user(self, name: str) -> dict[str, Any]:
        with self.database.engine.connect() as connection:
            return principal_view(principal_row(connection, name), Names.read(connection))

    def list_keys(self, *, user: str | None = None) -> list[dict[str, Any]]:
        with self.database.engine.connect() as connection:
            query = select(db.api_keys).order_by(db.api_keys.c.created_at)
            if user is not None:
                query = query.where(
                    db.api_keys.c.principal_id == principal_row(connection, user).id
                )
            names = Names.read(connection)
            now = self._clock()
            return [key_view(row, names, now) for row in connection.execute(query)]

    def get_key(self, key_id: str) -> dict[str, Any]:
        with self.database.engine.connect() as connection:
            return key_view(key_row(connection, key_id), Names.read(connection), self._clock())

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
        # Read first: a replica starting must not bump the version (and make every other
        # replica reload) when there is nothing to write.
        with self.database.engine.connect() as connection:
            if connection.scalar(select(db.organizations.c.id).limit(1)) is not None:
                return
        with self._writing() as connection:
            if connection.scalar(select(db.organizations.c.id).limit(1)) is None:
                with contextlib.suppress(ConflictError):  # a replica starting alongside won
                    self._insert_org(connection, DEFAULT_ORG)

    def create_org(self, name: str) -> Change:
        with self._writing() as connection:
            return None, org_view(self._insert_org(connection, checked_name(name, "name")))

    def create_team(
        self,
        name: str,
        *,
        org: str | None = None,
        allowed_regions: list[str] | None = None,
        limits: Mapping[str, Any] | None = None,
    ) -> Change:
        with self._writing() as connection:
            org_id = org_id_of(connection, org or DEFAULT_ORG)
            values = {
                "id": f"team_{uuid.uuid4().hex[:20]}",
                "org_id": org_id,
                "name": checked_name(name, "name"),
                "policy": {"allowed_regions": region_list(allowed_regions)},
                "limits": dict(limits or {}),
                "created_at": self._clock(),
            }
            insert_unique(connection, db.teams, values, f"team {name!r} already exists")
            return None, team_view(team_row(connection, name), self._org_names(connection))

    def update_team(self, name: str, changes: Mapping[str, Any]) -> Change:
        with self._writing() as connection:
            row = team_row(connection, name)
            before = team_view(row, self._org_names(connection))
            values: dict[str, Any] = {}
            if "allowed_regions" in changes:
                values["policy"] = {
                    **row.policy,
                    "allowed_regions": region_list(changes["allowed_regions"]),
                }
            if "limits" in changes:
                values["limits"] = dict(changes["limits"] or {})
            if values:
                connection.execute(update(db.teams).where(db.teams.c.id == row.id).values(values))
            return before, team_view(team_row(connection, name), self._org_names(connection))

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
            team_found = team_row(connection, team) if team is not None else None
            org_id = team_found.org_id if team_found is not None else org_id_of(connection, org)
            values = {
                "id": f"{'usr' if kind == 'user' else 'sa'}_{uuid.uuid4().hex[:20]}",
                "kind": kind,
                "name": checked_name(name, "name"),
                "email": email,
                "org_id": org_id,
                "team_id": team_found.id if team_found is not None else None,
                "role": checked_role(role),
                "limits": dict(limits or {}),
                "disabled": False,
                "created_at": self._clock(),
            }
            insert_unique(connection, db.principals, values, f"user {name!r} already exists")
            return None, principal_view(principal_row(connection, name), Names.read(connection))

    def update_user(self, name: str, changes: Mapping[str, Any]) -> Change:
        with self._writing() as connection:
            row = principal_row(connection, name)
            names = Names.read(connection)
            before = principal_view(row, names)
            values: dict[str, Any] = {}
            for field in ("email", "disabled"):
                if field in changes:
                    values[field] = changes[field]
            if "role" in changes:
                values["role"] = checked_role(changes["role"])
            if "limits" in changes:
                values["limits"] = dict(changes["limits"] or {})
            if "team" in changes:
                team = changes["team"]
                values["team_id"] = None if team is None else team_row(connection, team).id
            if values:
                connection.execute(
                    update(db.principals).where(db.principals.c.id == row.id).values(values)
                )
            return before, principal_view(principal_row(connection, name), names)

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
            checked_role(role)
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
            owner = principal_row(connection, user)
            may_manage_keys_of(created_by, owner)
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
                "models": model_list(asked.models),
                "routes": route_classes(asked.routes),
                "ip_allowlist": network_list(asked.ip_allowlist),
                "limits": dict(asked.limits or {}),
                "expires_at": expires_at,
                "revoked_at": None,
                "rotated_from": rotated_from,
                "created_by": created_by.name,
                "created_at": self._clock(),
            }
            connection.execute(insert(db.api_keys).values(values))
            return key_view(key_row(connection, values["id"]), Names.read(connection), None), secret

    def revoke_key(self, key_id: str, *, by: Actor) -> Change:
        with self._writing() as connection:
            row = key_row(connection, key_id)
            may_manage_keys_of(by, principal_by_id(connection, row.principal_id))
            names = Names.read(connection)
            before = key_view(row, names, self._clock())
            if row.revoked_at is None:
                connection.execute(
                    update(db.api_keys)
                    .where(db.api_keys.c.id == key_id)
                    .values(revoked_at=self._clock())
                )
            return before, key_view(key_row(connection, key_id), names, self._clock())

    def rotate_key(
        self, key_id: str, *, by: Actor, overlap_s: int, bounds: KeyBounds | None = None
    ) -> tuple[dict[str, Any], dict[str, Any], str]:
        """A new key with the same grants; the old one keeps working for `overlap_s` seconds.
        Returns (old key after, new key, new secret)."""
        with self.database.engine.connect() as connection:
            old = key_row(connection, key_id)
            owner = principal_by_id(connection, old.principal_id)
        may_manage_keys_of(by, owner)  # before saying anything about someone else's key
        if old.revoked_at is not None:
            raise ConflictError(f"key {key_id} is revoked; create a new one instead")
        now = self._clock()
        if old.expires_at is not None and aware(old.expires_at) <= now:
            raise ConflictError(f"key {key_id} has expired; create a new one instead")
        lifetime = None
        if old.expires_at is not None:
            lifetime = aware(old.expires_at) - aware(old.created_at)
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
            current = key_row(connection, key_id)
            if current.expires_at is None or aware(current.expires_at) > retire_at:
                connection.execute(
                    update(db.api_keys)
                    .where(db.api_keys.c.id == key_id)
                    .values(revoked_at=now if overlap_s == 0 else None, expires_at=retire_at)
                )
            old_after = key_view(key_row(connection, key_id), Names.read(connection), now)
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
            # Read back inside the transaction, which holds the row: exactly this write's value.
            version = int(connection.scalar(select(db.governance_state.c.version)) or 0)
        if self._on_commit is not None:
            self._on_commit(version)

    def _insert_org(self, connection: Connection, name: str) -> Row[Any]:
        values = {"id": f"org_{uuid.uuid4().hex[:20]}", "name": name, "created_at": self._clock()}
        insert_unique(connection, db.organizations, values, f"organization {name!r} already exists")
        return connection.execute(
            select(db.organizations).where(db.organizations.c.id == values["id"])
        ).one()

    @staticmethod
    def _org_names(connection: Connection) -> dict[str, str]:
        return {row.id: row.name for row in connection.execute(select(db.organizations))}


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
