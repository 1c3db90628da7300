"""`keel audit list|export|verify`: the tamper-evident audit log through the Python SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from keel.cli.output import console, reported_errors
from keel.sdk import Keel
from keel.sdk.audit import AuditAPI

__all__ = ["app"]

app = typer.Typer(
    name="audit",
    help="The tamper-evident audit log: list and export entries, verify the hash chain.",
    no_args_is_help=True,
)

UrlOption = typer.Option(None, "--url", envvar="KEEL_URL", help="Keel server URL.")
KeyOption = typer.Option(None, "--api-key", envvar="KEEL_API_KEY", help="Keel API key.")
SinceOption = typer.Option(None, "--since", help="ISO-8601 time, inclusive (naive times are UTC).")
UntilOption = typer.Option(None, "--until", help="ISO-8601 time, exclusive (naive times are UTC).")
ActorOption = typer.Option(None, "--actor", help="Only this actor's entries.")
ActionOption = typer.Option(
    None, "--action", help='Only this action, or a prefix ending in "*" (e.g. "key.*").'
)


@contextmanager
def _audit(url: str | None, api_key: str | None) -> Iterator[AuditAPI]:
    with reported_errors(), Keel(url, api_key=api_key) as client:
        yield client.audit


@app.command("list")
def list_entries(
    since: str | None = SinceOption,
    until: str | None = UntilOption,
    actor: str | None = ActorOption,
    action: str | None = ActionOption,
    limit: int = typer.Option(100, "--limit", min=1, max=1000),
    after_seq: int | None = typer.Option(
        None, "--after-seq", min=0, help="Entries after this seq (the next page)."
    ),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List audit entries, oldest first."""
    with _audit(url, api_key) as audit:
        page = audit.page(
            since=since, until=until, actor=actor, action=action, limit=limit, after_seq=after_seq
        )
    entries: list[dict[str, Any]] = page["data"]
    if as_json:
        typer.echo(json.dumps(entries, indent=2, ensure_ascii=False))
        return
    table = Table("seq", "time (UTC)", "actor", "action", "target", "outcome", "source ip")
    for entry in entries:
        table.add_row(
            str(entry["seq"]),
            entry["at"][:19].replace("T", " "),
            entry["actor"],
            entry["action"],
            entry.get("target") or "",
            entry["outcome"],
            entry.get("source_ip") or "",
        )
    console.print(table)
    if page.get("next_after_seq") is not None:
        console.print(f"[dim]more: --after-seq {page['next_after_seq']}[/dim]")


@app.command("export")
def export(
    out: Path = typer.Option(..., "--out", "-o", dir_okay=False, help="The JSONL file to write."),
    since: str | None = SinceOption,
    until: str | None = UntilOption,
    actor: str | None = ActorOption,
    action: str | None = ActionOption,
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
) -> None:
    """Export audit entries as JSON lines (every column, hashes included)."""
    with _audit(url, api_key) as audit, console.status(f"exporting to {out}..."):
        count = audit.export(out, since=since, until=until, actor=actor, action=action)
    typer.echo(f"wrote {count} entr{'y' if count == 1 else 'ies'} to {out}")


@app.command("verify")
def verify(url: str | None = UrlOption, api_key: str | None = KeyOption) -> None:
    """Check the hash chain: exit 0 if intact, 1 naming the first broken entry."""
    with _audit(url, api_key) as audit:
        result = audit.verify()
    if result["ok"]:
        typer.echo(f"chain intact: {result['checked']} entries")
        if result.get("head_hash"):
            typer.echo(f"head hash: {result['head_hash']}")
        return
    typer.secho(
        f"broken at entry {result['first_broken_seq']}: {result['reason']}",
        fg=typer.colors.RED,
    )
    raise typer.Exit(1)
