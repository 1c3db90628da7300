"""`keel keys ...`, `keel usage` and `keel whoami`: API keys and what they may still spend,
through the Python SDK.

A key's secret is printed by `keys create` and `keys rotate` only, once; no other command
prints one, with or without --json.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.text import Text

from keel.cli.governance_shared import (
    ROLES,
    JsonOption,
    KeyOption,
    RpmOption,
    TokensPerDayOption,
    TpmOption,
    UrlOption,
    UsdPerDayOption,
    UsdPerMonthOption,
    check_choice,
    duration_option,
    governance_client,
    limits_given,
    limits_text,
    names,
    new_table,
    print_json,
    print_records,
    public,
    show_record,
    when,
)
from keel.cli.output import fail

__all__ = ["STORE_IT", "keys_app", "usage", "usage_bar", "whoami"]

keys_app = typer.Typer(
    name="keys",
    help="API keys: create, scope, rotate with overlap, revoke.",
    no_args_is_help=True,
)

ENVIRONMENTS = ("production", "sandbox")
ROUTES = ("inference", "management")
STORE_IT = "Store it now; it is not shown again."


# -- whoami and usage -------------------------------------------------------------------------


def _whoami_fields(me: dict[str, Any]) -> list[tuple[str, str]]:
    auth = "required" if me.get("auth_required") else "open (local callers are admin)"
    return [
        ("name", me["name"]),
        ("kind", me.get("kind") or "-"),
        ("role", me.get("role") or "-"),
        ("team", me.get("team") or "-"),
        ("org", me.get("org") or "-"),
        ("key", me.get("key_id") or "-"),
        ("environment", me.get("environment") or "-"),
        ("models", names(me.get("allowed_models"))),
        ("auth", auth),
    ]


def whoami(
    url: str | None = UrlOption, api_key: str | None = KeyOption, as_json: bool = JsonOption
) -> None:
    """Who the server takes you for: name, role, team, key and its environment."""
    show_record(
        url,
        api_key,
        as_json=as_json,
        fetch=lambda governance: public(governance.whoami()),
        fields=_whoami_fields,
    )


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


def _usage_row(row: dict[str, Any]) -> tuple[str | Text, ...]:
    metric = row["metric"]
    return (
        row["scope"],
        f"{_amount(row['limit'], metric)} {metric} / {row['window']}",
        _amount(row["used"], metric),
        usage_bar(row["used"], row["limit"]),
        _amount(row["remaining"], metric),
        when(row.get("resets_at")),
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
    with governance_client(url, api_key) as governance:
        rows = governance.usage(key=key, user=user, team=team, model=model)
    if not rows and not as_json:
        typer.echo("No limits apply: unlimited.")
        return
    print_records(
        rows,
        as_json=as_json,
        table=new_table(
            "scope", "limit", "used", "", "remaining", "resets (UTC)", whole=("scope", "")
        ),
        row=_usage_row,
    )


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
        ("models", names(key.get("models"))),
        ("routes", names(key.get("routes"))),
        ("ip allow-list", names(key.get("ip_allowlist"), none="any")),
        ("limits", limits_text(key.get("limits"))),
        ("expires", when(key.get("expires_at")) if key.get("expires_at") else "never"),
        ("revoked", when(key.get("revoked_at")) if key.get("revoked_at") else "no"),
        ("rotated from", key.get("rotated_from") or "-"),
        ("created", f"{when(key.get('created_at'))} by {key.get('created_by') or '-'}"),
    ]


def _key_row(key: dict[str, Any]) -> tuple[str, ...]:
    expires = key.get("expires_at")
    return (
        key["id"],
        key.get("prefix") or "",
        key["name"],
        key.get("user") or "-",
        key["environment"],
        key.get("status") or "",
        expires[:10] if expires else "never",
    )


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
    with governance_client(url, api_key) as governance:
        keys = governance.keys.list(user=user)
    print_records(
        public(keys),
        as_json=as_json,
        table=new_table(
            "id", "prefix", "name", "user", "env", "status", "expires", whole=("id", "prefix")
        ),
        row=_key_row,
    )


@keys_app.command("show")
def show_key(
    key_id: str = typer.Argument(..., metavar="ID"),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Show a key's grants and status (not its secret)."""
    show_record(
        url,
        api_key,
        as_json=as_json,
        fetch=lambda governance: public(governance.keys.get(key_id)),
        fields=_key_fields,
    )


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
    check_choice("--environment", environment, ENVIRONMENTS)
    check_choice("--role", role, ROLES)
    for each in route:
        check_choice("--route", each, ROUTES)
    if expires_in is not None and expires_at is not None:
        fail("--expires-in: can't be combined with --expires-at")
    seconds = None if expires_in is None else duration_option("--expires-in", expires_in, minimum=1)
    limits = limits_given(rpm, tpm, tokens_per_day, usd_per_day, usd_per_month)
    with governance_client(url, api_key) as governance:
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
        print_json(key)
        return
    expires = f", expires {when(key['expires_at'])} UTC" if key.get("expires_at") else ""
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
    with governance_client(url, api_key) as governance:
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
    overlap_s = duration_option("--overlap", overlap, minimum=0)
    with governance_client(url, api_key) as governance:
        key = governance.keys.rotate(key_id, overlap_s=overlap_s)
    if as_json:
        print_json(key)
        return
    previous = key.get("previous") or {}
    if overlap_s == 0 or previous.get("revoked_at"):
        old = f"{key_id} stops working now"
    else:
        old = f"{key_id} keeps working until {when(previous.get('expires_at'))} UTC"
    typer.echo(f"rotated {key_id} -> {key['id']}; {old}")
    _print_secret(key["secret"])
