"""`keel users|teams|orgs|keys ...`, `keel usage` and `keel whoami`, through the Python SDK.

A key's secret is printed by `keys create` and `keys rotate` only, once; no other command
prints one, with or without --json.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from keel.cli.output import console, fail
from keel.sdk import Keel, KeelAPIError, KeelConnectionError
from keel.sdk.governance import UNSET, GovernanceAPI

__all__ = [
    "keys_app",
    "orgs_app",
    "parse_duration",
    "teams_app",
    "usage",
    "users_app",
    "whoami",
]

users_app = typer.Typer(
    name="users", help="Users and service accounts: roles, teams, limits.", no_args_is_help=True
)
teams_app = typer.Typer(
    name="teams", help="Teams: region policy and shared limits.", no_args_is_help=True
)
orgs_app = typer.Typer(name="orgs", help="Organizations.", no_args_is_help=True)
keys_app = typer.Typer(
    name="keys",
    help="API keys: create, scope, rotate with overlap, revoke.",
    no_args_is_help=True,
)

ROLES = ("admin", "maintainer", "developer", "viewer")
KINDS = ("user", "service_account")
ENVIRONMENTS = ("production", "sandbox")
ROUTES = ("inference", "management")
STORE_IT = "Store it now; it is not shown again."

UrlOption = typer.Option(None, "--url", envvar="KEEL_URL", help="Keel server URL.")
KeyOption = typer.Option(None, "--api-key", envvar="KEEL_API_KEY", help="Keel API key.")
JsonOption = typer.Option(False, "--json", help="Print JSON.")
RpmOption = typer.Option(None, "--rpm", min=0, help="Requests per minute.")
TpmOption = typer.Option(None, "--tpm", min=0, help="Tokens per minute.")
TokensPerDayOption = typer.Option(None, "--tokens-per-day", min=0, help="Tokens per UTC day.")
UsdPerDayOption = typer.Option(None, "--usd-per-day", min=0, help="Spend per UTC day, USD.")
UsdPerMonthOption = typer.Option(None, "--usd-per-month", min=0, help="Spend per month, USD.")
ClearLimitsOption = typer.Option(
    False, "--clear-limits", help="Remove every limit (then apply any limit options given)."
)
RegionOption = typer.Option(
    [], "--allowed-region", help="A region its requests may go to; repeatable."
)

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$", re.IGNORECASE | re.ASCII)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> int:
    """`30d`, `12h`, `90m`, `45s`, `2w` or plain seconds (`3600`) as seconds."""
    found = _DURATION.fullmatch(text)
    if found is None:
        raise ValueError(f"{text!r} is not a duration like 30d, 12h, 90m or 3600 (seconds)")
    return int(found.group(1)) * _UNIT_SECONDS[found.group(2).lower()]


def _duration_option(option: str, text: str, *, minimum: int) -> int:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        fail(f"{option}: {exc}")
    if seconds < minimum:
        fail(f"{option}: must be at least {minimum} second{'s' if minimum != 1 else ''}")
    return seconds


def _choice(option: str, value: str | None, choices: tuple[str, ...]) -> None:
    if value is not None and value not in choices:
        fail(f"{option}: {value!r} is not one of {', '.join(choices)}")


@contextmanager
def _governance(url: str | None, api_key: str | None) -> Iterator[GovernanceAPI]:
    try:
        with Keel(url, api_key=api_key) as client:
            yield client.governance
    except KeelConnectionError as exc:
        fail(f"{exc}\nIs the server running? Start it with: keel serve")
    except KeelAPIError as exc:
        where = f" (field: {exc.param})" if exc.param else ""
        fail(f"{exc}{where}")


# -- formatting -----------------------------------------------------------------------------


def _public(value: Any) -> Any:
    """`value` without any `secret` field: only create and rotate may print one."""
    if isinstance(value, dict):
        return {key: _public(item) for key, item in value.items() if key != "secret"}
    if isinstance(value, list):
        return [_public(item) for item in value]
    return value


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False))


def _when(value: str | None) -> str:
    """An ISO time as `2026-03-01 14:05` (UTC; --json has the exact value)."""
    return value[:16].replace("T", " ") if value else "-"


def _table(*headers: str, whole: tuple[str, ...] = ()) -> Table:
    """A Rich table whose `whole` columns never wrap: ids and times are copied, not read."""
    table = Table()
    for header in headers:
        table.add_column(header, no_wrap=header in whole)
    return table


def _add_row(table: Table, *cells: str | Text) -> None:
    # Text, not markup: key names, emails and regions are the users' own text, and a "[" in
    # them must print as itself.
    table.add_row(*(Text(cell) if isinstance(cell, str) else cell for cell in cells))


def _names(values: list[str] | None, *, none: str = "all") -> str:
    return none if values is None else ", ".join(values) or "(none)"


def _limits_text(limits: Mapping[str, Any] | None) -> str:
    return ", ".join(f"{key}={value:g}" for key, value in (limits or {}).items()) or "-"


def _print_fields(rows: list[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        typer.echo(f"{label.ljust(width)}  {value}")


def _limits(
    rpm: int | None,
    tpm: int | None,
    tokens_per_day: int | None,
    usd_per_day: float | None,
    usd_per_month: float | None,
) -> dict[str, Any]:
    given = {
        "rpm": rpm,
        "tpm": tpm,
        "tokens_per_day": tokens_per_day,
        "usd_per_day": usd_per_day,
        "usd_per_month": usd_per_month,
    }
    return {key: value for key, value in given.items() if value is not None}


def _merged_limits(
    current: Mapping[str, Any], given: dict[str, Any], clear: bool
) -> dict[str, Any] | None:
    """What to PATCH as `limits` (the server replaces the whole set): the current limits with
    the given ones over them, or None to leave them alone."""
    if not given and not clear:
        return None
    return {**({} if clear else dict(current)), **given}


# -- whoami and usage -------------------------------------------------------------------------


def whoami(
    url: str | None = UrlOption, api_key: str | None = KeyOption, as_json: bool = JsonOption
) -> None:
    """Who the server takes you for: name, role, team, key and its environment."""
    with _governance(url, api_key) as governance:
        me = governance.whoami()
    if as_json:
        _print_json(_public(me))
        return
    auth = "required" if me.get("auth_required") else "open (local callers are admin)"
    _print_fields(
        [
            ("name", me["name"]),
            ("kind", me.get("kind") or "-"),
            ("role", me.get("role") or "-"),
            ("team", me.get("team") or "-"),
            ("org", me.get("org") or "-"),
            ("key", me.get("key_id") or "-"),
            ("environment", me.get("environment") or "-"),
            ("models", _names(me.get("allowed_models"))),
            ("auth", auth),
        ]
    )


def usage(
    key: str | None = typer.Option(None, "--key", help="A key id."),
    user: str | None = typer.Option(None, "--user", help="A user or service account."),
    team: str | None = typer.Option(None, "--team"),
    model: str | None = typer.Option(None, "--model", "-m", help="A model id or group."),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Show each limit that applies, what its window has used and what remains.

    With no filter: your own key, user and team. Others' need maintainer or admin."""
    with _governance(url, api_key) as governance:
        rows = governance.usage(key=key, user=user, team=team, model=model)
    if as_json:
        _print_json(rows)
        return
    if not rows:
        typer.echo("No limits apply: unlimited.")
        return
    table = _table("scope", "limit", "used", "", "remaining", "resets (UTC)", whole=("scope", ""))
    for row in rows:
        metric = row["metric"]
        _add_row(
            table,
            row["scope"],
            f"{_amount(row['limit'], metric)} {metric} / {row['window']}",
            _amount(row["used"], metric),
            usage_bar(row["used"], row["limit"]),
            _amount(row["remaining"], metric),
            _when(row.get("resets_at")),
        )
    console.print(table)


def _amount(value: float, metric: str) -> str:
    return f"${value:,.4f}".rstrip("0").rstrip(".") if metric == "usd" else f"{value:,.0f}"


def usage_bar(used: float, limit: float, width: int = 12) -> Text:
    """`████░░░░░░░░  35%`, green, then yellow from 75%, red from 90%."""
    share = 1.0 if limit <= 0 else min(1.0, max(0.0, used / limit))
    filled = round(share * width)
    style = "red" if share >= 0.9 else "yellow" if share >= 0.75 else "green"
    bar = Text("█" * filled, style=style)
    bar.append("░" * (width - filled), style="dim")
    bar.append(f" {share:4.0%}")
    return bar


# -- organizations ----------------------------------------------------------------------------


@orgs_app.command("list")
def list_orgs(
    url: str | None = UrlOption, api_key: str | None = KeyOption, as_json: bool = JsonOption
) -> None:
    """List the organizations."""
    with _governance(url, api_key) as governance:
        orgs = governance.orgs.list()
    if as_json:
        _print_json(orgs)
        return
    table = _table("name", "id", "created", whole=("id", "created"))
    for org in orgs:
        _add_row(table, org["name"], org["id"], _when(org.get("created_at")))
    console.print(table)


@orgs_app.command("create")
def create_org(
    name: str = typer.Argument(...),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Create an organization."""
    with _governance(url, api_key) as governance:
        org = governance.orgs.create(name)
    if as_json:
        _print_json(org)
        return
    typer.echo(f"created organization {org['name']} ({org['id']})")


# -- teams ------------------------------------------------------------------------------------


def _team_fields(team: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        ("name", team["name"]),
        ("id", team["id"]),
        ("org", team.get("org") or "-"),
        ("regions", _names(team.get("allowed_regions"), none="any (no policy)")),
        ("limits", _limits_text(team.get("limits"))),
        ("created", _when(team.get("created_at"))),
    ]


@teams_app.command("list")
def list_teams(
    url: str | None = UrlOption, api_key: str | None = KeyOption, as_json: bool = JsonOption
) -> None:
    """List the teams."""
    with _governance(url, api_key) as governance:
        teams = governance.teams.list()
    if as_json:
        _print_json(teams)
        return
    table = Table("name", "org", "regions", "limits")
    for team in teams:
        _add_row(
            table,
            team["name"],
            team.get("org") or "-",
            _names(team.get("allowed_regions"), none="any"),
            _limits_text(team.get("limits")),
        )
    console.print(table)


@teams_app.command("show")
def show_team(
    name: str = typer.Argument(...),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Show a team."""
    with _governance(url, api_key) as governance:
        team = governance.teams.get(name)
    if as_json:
        _print_json(team)
        return
    _print_fields(_team_fields(team))


@teams_app.command("create")
def create_team(
    name: str = typer.Argument(...),
    org: str | None = typer.Option(None, "--org", help="Default: the default organization."),
    allowed_region: list[str] = RegionOption,
    rpm: int | None = RpmOption,
    tpm: int | None = TpmOption,
    tokens_per_day: int | None = TokensPerDayOption,
    usd_per_day: float | None = UsdPerDayOption,
    usd_per_month: float | None = UsdPerMonthOption,
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Create a team (limits are shared by all its members)."""
    limits = _limits(rpm, tpm, tokens_per_day, usd_per_day, usd_per_month)
    with _governance(url, api_key) as governance:
        team = governance.teams.create(
            name, org=org, allowed_regions=allowed_region or None, limits=limits or None
        )
    if as_json:
        _print_json(team)
        return
    typer.echo(f"created team {team['name']} in {team.get('org') or '-'}")


@teams_app.command("update")
def update_team(
    name: str = typer.Argument(...),
    allowed_region: list[str] = typer.Option(
        [], "--allowed-region", help="Replace the allowed regions; repeatable."
    ),
    no_region_policy: bool = typer.Option(
        False, "--no-region-policy", help="Remove the team's region policy (server default)."
    ),
    rpm: int | None = RpmOption,
    tpm: int | None = TpmOption,
    tokens_per_day: int | None = TokensPerDayOption,
    usd_per_day: float | None = UsdPerDayOption,
    usd_per_month: float | None = UsdPerMonthOption,
    clear_limits: bool = ClearLimitsOption,
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Change a team's regions or limits; limits not named are kept."""
    if allowed_region and no_region_policy:
        fail("--no-region-policy: can't be combined with --allowed-region")
    given = _limits(rpm, tpm, tokens_per_day, usd_per_day, usd_per_month)
    if not (allowed_region or no_region_policy or given or clear_limits):
        fail("nothing to change: give --allowed-region, --no-region-policy or a limit option")
    with _governance(url, api_key) as governance:
        current = governance.teams.get(name) if given and not clear_limits else {}
        limits = _merged_limits(current.get("limits") or {}, given, clear_limits)
        team = governance.teams.update(
            name,
            allowed_regions=None if no_region_policy else allowed_region or UNSET,
            limits=UNSET if limits is None else limits,
        )
    if as_json:
        _print_json(team)
        return
    _print_fields(_team_fields(team))


# -- users and service accounts ---------------------------------------------------------------


def _user_fields(user: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        ("name", user["name"]),
        ("id", user["id"]),
        ("kind", user["kind"]),
        ("role", user["role"]),
        ("team", user.get("team") or "-"),
        ("org", user.get("org") or "-"),
        ("email", user.get("email") or "-"),
        ("limits", _limits_text(user.get("limits"))),
        ("disabled", "yes" if user.get("disabled") else "no"),
        ("created", _when(user.get("created_at"))),
    ]


@users_app.command("list")
def list_users(
    team: str | None = typer.Option(None, "--team", help="Only this team's members."),
    kind: str | None = typer.Option(None, "--kind", help="user or service_account."),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """List users and service accounts."""
    _choice("--kind", kind, KINDS)
    with _governance(url, api_key) as governance:
        users = governance.users.list(team=team, kind=kind)
    if as_json:
        _print_json(users)
        return
    table = Table("name", "kind", "role", "team", "org", "email", "disabled")
    for user in users:
        _add_row(
            table,
            user["name"],
            user["kind"],
            user["role"],
            user.get("team") or "-",
            user.get("org") or "-",
            user.get("email") or "",
            "yes" if user.get("disabled") else "",
        )
    console.print(table)


@users_app.command("show")
def show_user(
    name: str = typer.Argument(...),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Show a user or service account."""
    with _governance(url, api_key) as governance:
        user = governance.users.get(name)
    if as_json:
        _print_json(user)
        return
    _print_fields(_user_fields(user))


@users_app.command("create")
def create_user(
    name: str = typer.Argument(...),
    kind: str = typer.Option("user", "--kind", help="user or service_account."),
    role: str = typer.Option("developer", "--role", help="admin, maintainer, developer, viewer."),
    team: str | None = typer.Option(None, "--team"),
    org: str | None = typer.Option(None, "--org", help="Default: the team's, or the default."),
    email: str | None = typer.Option(None, "--email"),
    rpm: int | None = RpmOption,
    tpm: int | None = TpmOption,
    tokens_per_day: int | None = TokensPerDayOption,
    usd_per_day: float | None = UsdPerDayOption,
    usd_per_month: float | None = UsdPerMonthOption,
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Create a user, or with --kind service_account a service account."""
    _choice("--kind", kind, KINDS)
    _choice("--role", role, ROLES)
    limits = _limits(rpm, tpm, tokens_per_day, usd_per_day, usd_per_month)
    with _governance(url, api_key) as governance:
        user = governance.users.create(
            name, kind=kind, role=role, team=team, org=org, email=email, limits=limits or None
        )
    if as_json:
        _print_json(user)
        return
    where = f" in team {user['team']}" if user.get("team") else ""
    what = "service account" if user["kind"] == "service_account" else "user"
    typer.echo(f"created {what} {user['name']} ({user['role']}){where}")


@users_app.command("update")
def update_user(
    name: str = typer.Argument(...),
    role: str | None = typer.Option(None, "--role", help="admin, maintainer, developer, viewer."),
    team: str | None = typer.Option(None, "--team", help="Move to this team."),
    no_team: bool = typer.Option(False, "--no-team", help="Take out of their team."),
    email: str | None = typer.Option(None, "--email"),
    enabled: bool | None = typer.Option(
        None, "--enable/--disable", help="Allow or refuse all of their keys.", show_default=False
    ),
    rpm: int | None = RpmOption,
    tpm: int | None = TpmOption,
    tokens_per_day: int | None = TokensPerDayOption,
    usd_per_day: float | None = UsdPerDayOption,
    usd_per_month: float | None = UsdPerMonthOption,
    clear_limits: bool = ClearLimitsOption,
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Change a user's role, team, email, limits or status; limits not named are kept."""
    _choice("--role", role, ROLES)
    if team is not None and no_team:
        fail("--no-team: can't be combined with --team")
    given = _limits(rpm, tpm, tokens_per_day, usd_per_day, usd_per_month)
    changes: dict[str, Any] = {}
    if role is not None:
        changes["role"] = role
    if team is not None or no_team:
        changes["team"] = team
    if email is not None:
        changes["email"] = email
    if enabled is not None:
        changes["disabled"] = not enabled
    if not (changes or given or clear_limits):
        fail(
            "nothing to change: give --role, --team, --no-team, --email, --enable/--disable "
            "or a limit option"
        )
    with _governance(url, api_key) as governance:
        current = governance.users.get(name) if given and not clear_limits else {}
        limits = _merged_limits(current.get("limits") or {}, given, clear_limits)
        if limits is not None:
            changes["limits"] = limits
        user = governance.users.update(name, **changes)
    if as_json:
        _print_json(user)
        return
    _print_fields(_user_fields(user))


@users_app.command("disable")
def disable_user(
    name: str = typer.Argument(...),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
) -> None:
    """Disable a user or service account: all of their keys are refused from now on
    (`keel users update NAME --enable` undoes it)."""
    with _governance(url, api_key) as governance:
        governance.users.disable(name)
    typer.echo(f"disabled {name}: their keys are refused")


# -- keys -------------------------------------------------------------------------------------


def _key_fields(key: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        ("id", key["id"]),
        ("name", key["name"]),
        ("user", key.get("user") or "-"),
        ("prefix", key.get("prefix") or "-"),
        ("status", key.get("status") or "-"),
        ("environment", key["environment"]),
        ("role", key.get("role") or "owner's"),
        ("models", _names(key.get("models"))),
        ("routes", _names(key.get("routes"))),
        ("ip allow-list", _names(key.get("ip_allowlist"), none="any")),
        ("limits", _limits_text(key.get("limits"))),
        ("expires", _when(key.get("expires_at")) if key.get("expires_at") else "never"),
        ("revoked", _when(key.get("revoked_at")) if key.get("revoked_at") else "no"),
        ("rotated from", key.get("rotated_from") or "-"),
        ("created", f"{_when(key.get('created_at'))} by {key.get('created_by') or '-'}"),
    ]


def _print_secret(secret: str) -> None:
    # Plain echo, not Rich: the secret must come out on one line exactly as it is.
    typer.echo(f"secret: {secret}")
    typer.secho(STORE_IT, fg=typer.colors.YELLOW, bold=True)


@keys_app.command("list")
def list_keys(
    user: str | None = typer.Option(None, "--user", help="Only this user's keys."),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """List keys (never their secrets): yours, or with directory access everyone's."""
    with _governance(url, api_key) as governance:
        keys = governance.keys.list(user=user)
    if as_json:
        _print_json(_public(keys))
        return
    table = _table(
        "id", "prefix", "name", "user", "env", "status", "expires", whole=("id", "prefix")
    )
    for key in keys:
        expires = key.get("expires_at")
        _add_row(
            table,
            key["id"],
            key.get("prefix") or "",
            key["name"],
            key.get("user") or "-",
            key["environment"],
            key.get("status") or "",
            expires[:10] if expires else "never",
        )
    console.print(table)


@keys_app.command("show")
def show_key(
    key_id: str = typer.Argument(..., metavar="ID"),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Show a key's grants and status (not its secret)."""
    with _governance(url, api_key) as governance:
        key = governance.keys.get(key_id)
    if as_json:
        _print_json(_public(key))
        return
    _print_fields(_key_fields(key))


@keys_app.command("create")
def create_key(
    name: str = typer.Option("default", "--name", help="A label for the key."),
    user: str | None = typer.Option(None, "--user", help="Whose key (default: yours)."),
    environment: str = typer.Option(
        "production", "--environment", "-e", help="production or sandbox."
    ),
    role: str | None = typer.Option(None, "--role", help="Narrower than the owner's role."),
    model: list[str] = typer.Option(
        [], "--model", "-m", help="A model it may call; repeatable (default: all)."
    ),
    route: list[str] = typer.Option(
        [], "--route", help="inference or management; repeatable (default: both)."
    ),
    ip: list[str] = typer.Option(
        [], "--ip", help="An address or CIDR network it may be used from; repeatable."
    ),
    expires_in: str | None = typer.Option(
        None, "--expires-in", help="30d, 12h, 90m, 2w or seconds."
    ),
    expires_at: str | None = typer.Option(
        None, "--expires-at", help="ISO 8601 time (naive times are UTC)."
    ),
    rpm: int | None = RpmOption,
    tpm: int | None = TpmOption,
    tokens_per_day: int | None = TokensPerDayOption,
    usd_per_day: float | None = UsdPerDayOption,
    usd_per_month: float | None = UsdPerMonthOption,
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = typer.Option(False, "--json", help="Print JSON, the secret included."),
) -> None:
    """Create a key and print its secret, once."""
    _choice("--environment", environment, ENVIRONMENTS)
    _choice("--role", role, ROLES)
    for each in route:
        _choice("--route", each, ROUTES)
    if expires_in is not None and expires_at is not None:
        fail("--expires-in: can't be combined with --expires-at")
    seconds = (
        None if expires_in is None else _duration_option("--expires-in", expires_in, minimum=1)
    )
    limits = _limits(rpm, tpm, tokens_per_day, usd_per_day, usd_per_month)
    with _governance(url, api_key) as governance:
        key = governance.keys.create(
            name=name,
            user=user,
            environment=environment,
            role=role,
            models=model or None,
            routes=route or None,
            ip_allowlist=ip or None,
            expires_in_s=seconds,
            expires_at=expires_at,
            limits=limits or None,
        )
    if as_json:
        _print_json(key)
        return
    expires = f", expires {_when(key['expires_at'])} UTC" if key.get("expires_at") else ""
    typer.echo(
        f"created key {key['id']} ({key['name']}) for {key.get('user') or '-'}: "
        f"{key['environment']}{expires}"
    )
    _print_secret(key["secret"])


@keys_app.command("revoke")
def revoke_key(
    key_id: str = typer.Argument(..., metavar="ID"),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
) -> None:
    """Revoke a key: it is refused from now on."""
    with _governance(url, api_key) as governance:
        key = governance.keys.revoke(key_id)
    typer.echo(f"revoked {key['id']} ({key['name']}, {key.get('user') or '-'})")


@keys_app.command("rotate")
def rotate_key(
    key_id: str = typer.Argument(..., metavar="ID"),
    overlap: str = typer.Option(
        "1h", "--overlap", help="How long the old key keeps working: 1h, 30m, 0 (stop now)..."
    ),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = typer.Option(False, "--json", help="Print JSON, the new secret included."),
) -> None:
    """Replace a key with a new one with the same grants, and print the new secret, once."""
    overlap_s = _duration_option("--overlap", overlap, minimum=0)
    with _governance(url, api_key) as governance:
        key = governance.keys.rotate(key_id, overlap_s=overlap_s)
    if as_json:
        _print_json(key)
        return
    previous = key.get("previous") or {}
    if overlap_s == 0 or previous.get("revoked_at"):
        old = f"{key_id} stops working now"
    else:
        old = f"{key_id} keeps working until {_when(previous.get('expires_at'))} UTC"
    typer.echo(f"rotated {key_id} -> {key['id']}; {old}")
    _print_secret(key["secret"])
