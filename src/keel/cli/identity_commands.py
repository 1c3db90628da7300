"""`keel orgs|teams|users ...`: who may call the gateway, through the Python SDK."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from keel.cli.governance_shared import (
    ROLES,
    ClearLimitsOption,
    JsonOption,
    KeyOption,
    RpmOption,
    TokensPerDayOption,
    TpmOption,
    UrlOption,
    UsdPerDayOption,
    UsdPerMonthOption,
    check_choice,
    governance_client,
    limits_given,
    limits_text,
    merged_limits,
    names,
    new_table,
    print_json,
    print_record,
    print_records,
    show_record,
    when,
)
from keel.cli.output import fail
from keel.sdk.governance import UNSET

__all__ = ["orgs_app", "teams_app", "users_app"]

users_app = typer.Typer(
    name="users", help="Users and service accounts: roles, teams, limits.", no_args_is_help=True
)
teams_app = typer.Typer(
    name="teams", help="Teams: region policy and shared limits.", no_args_is_help=True
)
orgs_app = typer.Typer(name="orgs", help="Organizations.", no_args_is_help=True)

KINDS = ("user", "service_account")

RegionOption = typer.Option(
    [], "--allowed-region", help="A region its requests may go to; repeatable."
)


# -- organizations ----------------------------------------------------------------------------


@orgs_app.command("list")
def list_orgs(
    url: str | None = UrlOption, api_key: str | None = KeyOption, as_json: bool = JsonOption
) -> None:
    """List the organizations."""
    with governance_client(url, api_key) as governance:
        orgs = governance.orgs.list()
    print_records(
        orgs,
        as_json=as_json,
        table=new_table("name", "id", "created", whole=("id", "created")),
        row=lambda org: (org["name"], org["id"], when(org.get("created_at"))),
    )


@orgs_app.command("create")
def create_org(
    name: str = typer.Argument(...),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Create an organization."""
    with governance_client(url, api_key) as governance:
        org = governance.orgs.create(name)
    if as_json:
        print_json(org)
        return
    typer.echo(f"created organization {org['name']} ({org['id']})")


# -- teams ------------------------------------------------------------------------------------


def _team_fields(team: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        ("name", team["name"]),
        ("id", team["id"]),
        ("org", team.get("org") or "-"),
        ("regions", names(team.get("allowed_regions"), none="any (no policy)")),
        ("limits", limits_text(team.get("limits"))),
        ("created", when(team.get("created_at"))),
    ]


def _team_row(team: dict[str, Any]) -> tuple[str, ...]:
    return (
        team["name"],
        team.get("org") or "-",
        names(team.get("allowed_regions"), none="any"),
        limits_text(team.get("limits")),
    )


@teams_app.command("list")
def list_teams(
    url: str | None = UrlOption, api_key: str | None = KeyOption, as_json: bool = JsonOption
) -> None:
    """List the teams."""
    with governance_client(url, api_key) as governance:
        teams = governance.teams.list()
    print_records(
        teams, as_json=as_json, table=Table("name", "org", "regions", "limits"), row=_team_row
    )


@teams_app.command("show")
def show_team(
    name: str = typer.Argument(...),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Show a team."""
    show_record(
        url,
        api_key,
        as_json=as_json,
        fetch=lambda governance: governance.teams.get(name),
        fields=_team_fields,
    )


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
    limits = limits_given(rpm, tpm, tokens_per_day, usd_per_day, usd_per_month)
    with governance_client(url, api_key) as governance:
        team = governance.teams.create(
            name, org=org, allowed_regions=allowed_region or None, limits=limits or None
        )
    if as_json:
        print_json(team)
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
    given = limits_given(rpm, tpm, tokens_per_day, usd_per_day, usd_per_month)
    if not (allowed_region or no_region_policy or given or clear_limits):
        fail("nothing to change: give --allowed-region, --no-region-policy or a limit option")
    with governance_client(url, api_key) as governance:
        limits = merged_limits(given, clear_limits, lambda: governance.teams.get(name))
        team = governance.teams.update(
            name,
            allowed_regions=None if no_region_policy else allowed_region or UNSET,
            limits=UNSET if limits is None else limits,
        )
    print_record(team, as_json=as_json, fields=_team_fields)


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
        ("limits", limits_text(user.get("limits"))),
        ("disabled", "yes" if user.get("disabled") else "no"),
        ("created", when(user.get("created_at"))),
    ]


def _user_row(user: dict[str, Any]) -> tuple[str, ...]:
    return (
        user["name"],
        user["kind"],
        user["role"],
        user.get("team") or "-",
        user.get("org") or "-",
        user.get("email") or "",
        "yes" if user.get("disabled") else "",
    )


@users_app.command("list")
def list_users(
    team: str | None = typer.Option(None, "--team", help="Only this team's members."),
    kind: str | None = typer.Option(None, "--kind", help="user or service_account."),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """List users and service accounts."""
    check_choice("--kind", kind, KINDS)
    with governance_client(url, api_key) as governance:
        users = governance.users.list(team=team, kind=kind)
    print_records(
        users,
        as_json=as_json,
        table=Table("name", "kind", "role", "team", "org", "email", "disabled"),
        row=_user_row,
    )


@users_app.command("show")
def show_user(
    name: str = typer.Argument(...),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Show a user or service account."""
    show_record(
        url,
        api_key,
        as_json=as_json,
        fetch=lambda governance: governance.users.get(name),
        fields=_user_fields,
    )


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
    check_choice("--kind", kind, KINDS)
    check_choice("--role", role, ROLES)
    limits = limits_given(rpm, tpm, tokens_per_day, usd_per_day, usd_per_month)
    with governance_client(url, api_key) as governance:
        user = governance.users.create(
            name, kind=kind, role=role, team=team, org=org, email=email, limits=limits or None
        )
    if as_json:
        print_json(user)
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
    check_choice("--role", role, ROLES)
    if team is not None and no_team:
        fail("--no-team: can't be combined with --team")
    given = limits_given(rpm, tpm, tokens_per_day, usd_per_day, usd_per_month)
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
    with governance_client(url, api_key) as governance:
        limits = merged_limits(given, clear_limits, lambda: governance.users.get(name))
        if limits is not None:
            changes["limits"] = limits
        user = governance.users.update(name, **changes)
    print_record(user, as_json=as_json, fields=_user_fields)


@users_app.command("disable")
def disable_user(
    name: str = typer.Argument(...),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
) -> None:
    """Disable a user or service account: all of their keys are refused from now on
    (`keel users update NAME --enable` undoes it)."""
    with governance_client(url, api_key) as governance:
        governance.users.disable(name)
    typer.echo(f"disabled {name}: their keys are refused")
