"""What the governance commands share: their options, the parsers of what they are given, the
client they call and how they print what comes back.

The commands themselves are in `identity_commands` (orgs, teams, users) and `key_commands`
(keys, usage, whoami).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from keel.cli.output import console, fail, number, reported_errors
from keel.sdk import Keel
from keel.sdk.governance import GovernanceAPI

__all__ = [
    "ROLES",
    "ClearLimitsOption",
    "Fields",
    "JsonOption",
    "KeyOption",
    "RpmOption",
    "TokensPerDayOption",
    "TpmOption",
    "UrlOption",
    "UsdPerDayOption",
    "UsdPerMonthOption",
    "add_row",
    "check_choice",
    "duration_option",
    "governance_client",
    "limits_given",
    "limits_text",
    "merged_limits",
    "names",
    "new_table",
    "parse_duration",
    "print_json",
    "print_record",
    "print_records",
    "public",
    "show_record",
    "when",
]

ROLES = ("admin", "maintainer", "developer", "viewer")

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

# -- parsing what the commands are given ------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$", re.IGNORECASE | re.ASCII)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> int:
    """`30d`, `12h`, `90m`, `45s`, `2w` or plain seconds (`3600`) as seconds."""
    found = _DURATION.fullmatch(text)
    if found is None:
        raise ValueError(f"{text!r} is not a duration like 30d, 12h, 90m or 3600 (seconds)")
    return int(found.group(1)) * _UNIT_SECONDS[found.group(2).lower()]


def duration_option(option: str, text: str, *, minimum: int) -> int:
    """The seconds in `option`'s `text`, or the command fails saying what is wrong with it."""
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        fail(f"{option}: {exc}")
    if seconds < minimum:
        fail(f"{option}: must be at least {minimum} second{'s' if minimum != 1 else ''}")
    return seconds


def check_choice(option: str, value: str | None, choices: tuple[str, ...]) -> None:
    """Fail unless `value` (None: not given) is one of `choices`."""
    if value is not None and value not in choices:
        fail(f"{option}: {value!r} is not one of {', '.join(choices)}")


def limits_given(
    rpm: int | None,
    tpm: int | None,
    tokens_per_day: int | None,
    usd_per_day: float | None,
    usd_per_month: float | None,
) -> dict[str, Any]:
    """The limit options that were given, by the names the server knows them by."""
    given = {
        "rpm": rpm,
        "tpm": tpm,
        "tokens_per_day": tokens_per_day,
        "usd_per_day": usd_per_day,
        "usd_per_month": usd_per_month,
    }
    return {key: value for key, value in given.items() if value is not None}


def merged_limits(
    given: dict[str, Any], clear: bool, current: Callable[[], Mapping[str, Any]]
) -> dict[str, Any] | None:
    """What to PATCH as `limits` (the server replaces the whole set): the current limits with
    the given ones over them, or None to leave them alone.

    `current` fetches the record whose limits these are; it is called only when its limits are
    kept, that is when limits are given without --clear-limits."""
    if not given and not clear:
        return None
    kept = {} if clear else current().get("limits") or {}
    return {**kept, **given}


# -- the client -------------------------------------------------------------------------------


@contextmanager
def governance_client(url: str | None, api_key: str | None) -> Iterator[GovernanceAPI]:
    """The SDK's governance API; a connection or API error ends the command with its message."""
    with reported_errors(), Keel(url, api_key=api_key) as client:
        yield client.governance


# -- printing ---------------------------------------------------------------------------------

Fields = Callable[[dict[str, Any]], list[tuple[str, str]]]
"""A record as the `(label, value)` lines that `print_record` prints."""


def public(value: Any) -> Any:
    """`value` without any `secret` field: only create and rotate may print one."""
    if isinstance(value, dict):
        return {key: public(item) for key, item in value.items() if key != "secret"}
    if isinstance(value, list):
        return [public(item) for item in value]
    return value


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False))


def when(value: str | None) -> str:
    """An ISO time as `2026-03-01 14:05` (UTC; --json has the exact value)."""
    return value[:16].replace("T", " ") if value else "-"


def names(values: list[str] | None, *, none: str = "all") -> str:
    return none if values is None else ", ".join(values) or "(none)"


def limits_text(limits: Mapping[str, Any] | None) -> str:
    return ", ".join(f"{key}={number(value)}" for key, value in (limits or {}).items()) or "-"


def new_table(*headers: str, whole: tuple[str, ...] = ()) -> Table:
    """A Rich table whose `whole` columns never wrap: ids and times are copied, not read."""
    table = Table()
    for header in headers:
        table.add_column(header, no_wrap=header in whole)
    return table


def add_row(table: Table, *cells: str | Text) -> None:
    # Text, not markup: key names, emails and regions are the users' own text, and a "[" in
    # them must print as itself.
    table.add_row(*(Text(cell) if isinstance(cell, str) else cell for cell in cells))


def print_records(
    records: list[dict[str, Any]],
    *,
    as_json: bool,
    table: Table,
    row: Callable[[dict[str, Any]], Sequence[str | Text]],
) -> None:
    """`records` as JSON with --json, else as a `row` each in `table`."""
    if as_json:
        print_json(records)
        return
    for record in records:
        add_row(table, *row(record))
    console.print(table)


def print_record(record: dict[str, Any], *, as_json: bool, fields: Fields) -> None:
    """`record` as JSON with --json, else as its `fields`, a `label  value` line each."""
    if as_json:
        print_json(record)
        return
    lines = fields(record)
    width = max(len(label) for label, _ in lines)
    for label, value in lines:
        typer.echo(f"{label.ljust(width)}  {value}")


def show_record(
    url: str | None,
    api_key: str | None,
    *,
    as_json: bool,
    fetch: Callable[[GovernanceAPI], dict[str, Any]],
    fields: Fields,
) -> None:
    """What a `show` command does: fetch one record, then print it (`print_record`)."""
    with governance_client(url, api_key) as governance:
        record = fetch(governance)
    print_record(record, as_json=as_json, fields=fields)
