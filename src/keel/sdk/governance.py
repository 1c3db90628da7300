"""Identities, keys and usage from Python: `Keel(...).governance`.

gov = Keel(api_key=...).governance
gov.whoami()                                              # who this key is: role, team, env
gov.teams.create("ml", allowed_regions=["eu"], limits={"tokens_per_day": 1_000_000})
gov.users.create("ci-bot", kind="service_account", role="developer", team="ml")
key = gov.keys.create(user="ci-bot", environment="sandbox", expires_in_s=30 * 86400)
key["secret"]                                             # shown in this response only
gov.keys.rotate(key["id"], overlap_s=3600)                # old and new both work for an hour
gov.usage(team="ml")                                      # counters and what remains

Each method is one HTTP call and returns the server's JSON as plain dicts and lists; errors
raise `KeelAPIError` (its `param` names the field). Create calls send only the fields given;
`update` sends only the keyword arguments passed, so `teams.update("ml", allowed_regions=None)`
clears the region policy while `teams.update("ml", limits={...})` leaves it alone.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Final, Literal
from urllib.parse import quote

__all__ = ["UNSET", "GovernanceAPI", "KeysAPI", "OrgsAPI", "TeamsAPI", "UsersAPI"]

RequestFn = Callable[..., dict[str, Any]]
Rows = list[dict[str, Any]]
Limits = Mapping[str, float | int | None]
PREFIX = "/v1/keel"


class _Unset(enum.Enum):
    """The default of an `update` argument: "leave it alone", unlike None ("clear it")."""

    UNSET = enum.auto()

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset.UNSET
Unset = Literal[_Unset.UNSET]


def _seg(value: str) -> str:
    """One URL path segment (a name or key id), escaped: a '/' can't change the route."""
    return quote(value, safe="@")


def _given(**values: Any) -> dict[str, Any]:
    """The fields the caller set: None means "not given" for create calls and filters."""
    return {key: value for key, value in values.items() if value is not None}


def _changes(**values: Any) -> dict[str, Any]:
    """The fields the caller passed to an update: None stays (it clears the field)."""
    return {key: value for key, value in values.items() if value is not UNSET}


def _limits(limits: Limits | None) -> dict[str, Any] | None:
    # Unset limits mean unlimited, so a None value is simply left out.
    return None if limits is None else _given(**limits)


def _list(values: Iterable[str] | None) -> list[str] | None:
    if values is None:
        return None
    # One name on its own is a list of one, not a list of its letters.
    return [values] if isinstance(values, str) else list(values)


def _list_change(values: Iterable[str] | Unset | None) -> list[str] | Unset | None:
    return values if values is None or values is UNSET else _list(values)


def _limits_change(limits: Limits | Unset | None) -> dict[str, Any] | Unset | None:
    return limits if limits is None or limits is UNSET else _limits(limits)


class _Section:
    def __init__(self, request: RequestFn) -> None:
        self._request = request

    def _data(self, path: str, params: dict[str, Any] | None = None) -> Rows:
        rows: Rows = self._request("GET", path, params=params or {})["data"]
        return rows


class OrgsAPI(_Section):
    def list(self) -> Rows:
        return self._data(f"{PREFIX}/orgs")

    def create(self, name: str) -> dict[str, Any]:
        return self._request("POST", f"{PREFIX}/orgs", json={"name": name})


class TeamsAPI(_Section):
    def list(self) -> Rows:
        return self._data(f"{PREFIX}/teams")

    def get(self, name: str) -> dict[str, Any]:
        return self._request("GET", f"{PREFIX}/teams/{_seg(name)}")

    def create(
        self,
        name: str,
        *,
        org: str | None = None,
        allowed_regions: Iterable[str] | None = None,
        limits: Limits | None = None,
    ) -> dict[str, Any]:
        """A team in `org` (default: the default organization). `allowed_regions`: the
        deployment regions its requests may go to (None: no policy of its own)."""
        body = _given(
            name=name, org=org, allowed_regions=_list(allowed_regions), limits=_limits(limits)
        )
        return self._request("POST", f"{PREFIX}/teams", json=body)

    def update(
        self,
        name: str,
        *,
        allowed_regions: Iterable[str] | Unset | None = UNSET,
        limits: Limits | Unset | None = UNSET,
    ) -> dict[str, Any]:
        """Change only what is passed. `allowed_regions=None` removes the team's region policy;
        `limits` replaces all of the team's limits (None or {} removes them)."""
        body = _changes(
            allowed_regions=_list_change(allowed_regions), limits=_limits_change(limits)
        )
        return self._request("PATCH", f"{PREFIX}/teams/{_seg(name)}", json=body)


class UsersAPI(_Section):
    """People and service accounts (kind="service_account"): one directory, one namespace."""

    def list(self, team: str | None = None, kind: str | None = None) -> Rows:
        return self._data(f"{PREFIX}/users", _given(team=team, kind=kind))

    def get(self, name: str) -> dict[str, Any]:
        return self._request("GET", f"{PREFIX}/users/{_seg(name)}")

    def create(
        self,
        name: str,
        *,
        kind: str = "user",
        role: str = "developer",
        team: str | None = None,
        org: str | None = None,
        email: str | None = None,
        limits: Limits | None = None,
    ) -> dict[str, Any]:
        body = _given(
            name=name,
            kind=kind,
            role=role,
            team=team,
            org=org,
            email=email,
            limits=_limits(limits),
        )
        return self._request("POST", f"{PREFIX}/users", json=body)

    def update(
        self,
        name: str,
        *,
        role: str | Unset = UNSET,
        team: str | Unset | None = UNSET,
        email: str | Unset | None = UNSET,
        limits: Limits | Unset | None = UNSET,
        disabled: bool | Unset = UNSET,
    ) -> dict[str, Any]:
        """Change only what is passed. `team=None` takes the user out of their team;
        `limits` replaces all of the user's limits; `disabled=True` refuses all their keys."""
        body = _changes(
            role=role,
            team=team,
            email=email,
            limits=_limits_change(limits),
            disabled=disabled,
        )
        return self._request("PATCH", f"{PREFIX}/users/{_seg(name)}", json=body)

    def disable(self, name: str) -> dict[str, Any]:
        return self.update(name, disabled=True)


class KeysAPI(_Section):
    """API keys. Only `create` and `rotate` answers hold the `secret`; keep it then."""

    def list(self, user: str | None = None) -> Rows:
        return self._data(f"{PREFIX}/keys", _given(user=user))

    def get(self, key_id: str) -> dict[str, Any]:
        return self._request("GET", f"{PREFIX}/keys/{_seg(key_id)}")

    def create(
        self,
        *,
        name: str = "default",
        user: str | None = None,
        environment: str = "production",
        role: str | None = None,
        models: Iterable[str] | None = None,
        routes: Iterable[str] | None = None,
        ip_allowlist: Iterable[str] | None = None,
        expires_in_s: int | None = None,
        expires_at: datetime | str | None = None,
        limits: Limits | None = None,
    ) -> dict[str, Any]:
        """A key for `user` (default: yourself). `role` narrows the owner's role; `models`
        and `routes` ("inference", "management") narrow what it may call; `ip_allowlist`
        takes addresses or CIDR networks. Set `expires_in_s` or `expires_at`, not both."""
        when = expires_at.isoformat() if isinstance(expires_at, datetime) else expires_at
        body = _given(
            name=name,
            user=user,
            environment=environment,
            role=role,
            models=_list(models),
            routes=_list(routes),
            ip_allowlist=_list(ip_allowlist),
            expires_in_s=expires_in_s,
            expires_at=when,
            limits=_limits(limits),
        )
        return self._request("POST", f"{PREFIX}/keys", json=body)

    def revoke(self, key_id: str) -> dict[str, Any]:
        return self._request("POST", f"{PREFIX}/keys/{_seg(key_id)}/revoke")

    def rotate(self, key_id: str, overlap_s: int = 3600) -> dict[str, Any]:
        """A replacement key with the same grants (its `secret` is in the answer, and the old
        key under `previous`); the old key keeps working for `overlap_s` seconds (0: stops
        now)."""
        path = f"{PREFIX}/keys/{_seg(key_id)}/rotate"
        return self._request("POST", path, json={"overlap_s": overlap_s})


class GovernanceAPI:
    """The identity routes. `request` is the client's `_request(method, path, **kwargs)`."""

    def __init__(self, request: RequestFn) -> None:
        self._request = request
        self.orgs = OrgsAPI(request)
        self.teams = TeamsAPI(request)
        self.users = UsersAPI(request)
        self.keys = KeysAPI(request)

    def whoami(self) -> dict[str, Any]:
        """The caller as the server sees it: name, kind, role, team, org, key_id, environment,
        allowed_models, and whether the server requires authentication."""
        return self._request("GET", f"{PREFIX}/whoami")

    def usage(
        self,
        key: str | None = None,
        user: str | None = None,
        team: str | None = None,
        model: str | None = None,
    ) -> Rows:
        """Each limit that applies, with what is used and what remains in its current window.
        With no filter: your own key, user and team."""
        params = _given(key=key, user=user, team=team, model=model)
        rows: Rows = self._request("GET", f"{PREFIX}/usage", params=params)["data"]
        return rows
