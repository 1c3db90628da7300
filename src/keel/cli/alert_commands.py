"""`keel alerts list|history|deliveries` and `keel alerts rules list|show|add|delete|disable|
enable`: alert states and rules through the Python SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from keel.cli.output import console, fail, number, reported_errors
from keel.sdk import Keel
from keel.sdk.alerts import AlertsAPI

__all__ = ["app"]

app = typer.Typer(
    name="alerts",
    help="Alerts: current states, transition history, deliveries, and the rules.",
    no_args_is_help=True,
)
rules_app = typer.Typer(
    name="rules",
    help="Alert rules: list, show, add, delete, disable, enable.",
    no_args_is_help=True,
)
app.add_typer(rules_app, name="rules")

UrlOption = typer.Option(None, "--url", envvar="KEEL_URL", help="Keel server URL.")
KeyOption = typer.Option(None, "--api-key", envvar="KEEL_API_KEY", help="Keel API key.")
JsonOption = typer.Option(False, "--json", help="Print JSON.")
RuleOption = typer.Option(None, "--rule", help="Only this rule's.")
LimitOption = typer.Option(100, "--limit", min=1, max=1000)
BeforeOption = typer.Option(None, "--before-id", min=1, help="Older than this id (next page).")


@contextmanager
def _alerts(url: str | None, api_key: str | None) -> Iterator[AlertsAPI]:
    with reported_errors(), Keel(url, api_key=api_key) as client:
        yield client.alerts


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False))


def _when(value: str | None) -> str:
    return value[:19].replace("T", " ") if value else "-"


def _value(value: Any) -> str:
    return "-" if value is None else number(round(value, 6) if isinstance(value, float) else value)


@app.command("list")
def list_states(
    state: str | None = typer.Option(
        None, "--state", help="Only this state: inactive, pending, firing or resolved."
    ),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Every rule's current state."""
    with _alerts(url, api_key) as alerts:
        rows = alerts.list(state=state)
    if as_json:
        _print_json(rows)
        return
    table = Table("rule", "state", "since (UTC)", "value", "metric", "severity", "enabled")
    colors = {"firing": "red", "pending": "yellow", "resolved": "green"}
    for row in rows:
        color = colors.get(row["state"])
        shown = f"[{color}]{row['state']}[/{color}]" if color else row["state"]
        table.add_row(
            row["rule"],
            shown,
            _when(row.get("since")),
            _value(row.get("value")),
            row["metric"],
            row["severity"],
            "yes" if row["enabled"] else "no",
        )
    console.print(table)


@app.command("history")
def history(
    rule: str | None = RuleOption,
    limit: int = LimitOption,
    before_id: int | None = BeforeOption,
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """State transitions, newest first."""
    with _alerts(url, api_key) as alerts:
        rows = alerts.history(rule=rule, limit=limit, before_id=before_id)
    if as_json:
        _print_json(rows)
        return
    table = Table("id", "time (UTC)", "rule", "from", "to", "value", "severity")
    for row in rows:
        table.add_row(
            str(row["id"]),
            _when(row["at"]),
            row["rule"],
            row["from_state"],
            row["to_state"],
            _value(row.get("value")),
            row["severity"],
        )
    console.print(table)


@app.command("deliveries")
def deliveries(
    rule: str | None = RuleOption,
    limit: int = LimitOption,
    before_id: int | None = BeforeOption,
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """What each notifier did with each transition, newest first."""
    with _alerts(url, api_key) as alerts:
        rows = alerts.deliveries(rule=rule, limit=limit, before_id=before_id)
    if as_json:
        _print_json(rows)
        return
    table = Table("id", "time (UTC)", "rule", "transition", "notifier", "status", "attempts")
    table.add_column("detail")
    for row in rows:
        detail = row.get("error") or row.get("reference") or ""
        table.add_row(
            str(row["id"]),
            _when(row["at"]),
            row["rule"],
            str(row["history_id"]),
            row["notifier"],
            row["status"],
            str(row["attempts"]),
            detail,
        )
    console.print(table)


# -- rules -------------------------------------------------------------------------------------


@rules_app.command("list")
def list_rules(
    url: str | None = UrlOption, api_key: str | None = KeyOption, as_json: bool = JsonOption
) -> None:
    """Every rule, from keel.yaml (config) and created over the API (api)."""
    with _alerts(url, api_key) as alerts:
        rows = alerts.rules.list()
    if as_json:
        _print_json(rows)
        return
    table = Table("name", "metric", "condition", "window s", "for s", "severity", "source")
    table.add_column("enabled")
    for row in rows:
        condition = f"{row['condition']} {row['op']} {number(row['threshold'])}"
        table.add_row(
            row["name"],
            row["metric"],
            condition,
            number(row["window"]),
            number(row["for"]),
            row["severity"],
            row["source"],
            "yes" if row["enabled"] else "no",
        )
    console.print(table)


@rules_app.command("show")
def show_rule(
    name: str = typer.Argument(..., help="The rule's name."),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
) -> None:
    """One rule, as JSON."""
    with _alerts(url, api_key) as alerts:
        _print_json(alerts.rules.get(name))


def _rule_file(path: Path) -> dict[str, Any]:
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        fail(f"--file: cannot read {path}: {exc}")
    if not isinstance(loaded, dict):
        fail(f"--file: {path} must hold one rule (a mapping of fields)")
    return loaded


@rules_app.command("add")
def add_rule(
    name: str = typer.Argument(..., help="The rule's name."),
    metric: str | None = typer.Option(None, "--metric", help="e.g. error_rate (see the docs)."),
    threshold: float | None = typer.Option(None, "--threshold"),
    condition: str | None = typer.Option(
        None, "--condition", help="threshold (default), rate_of_change or anomaly."
    ),
    op: str | None = typer.Option(None, "--op", help=">, >=, < or <= (default >)."),
    window: str | None = typer.Option(None, "--window", help="e.g. 5m (default 5m)."),
    for_: str | None = typer.Option(None, "--for", help="How long before firing, e.g. 2m."),
    baseline_windows: int | None = typer.Option(None, "--baseline-windows", min=2),
    severity: str | None = typer.Option(None, "--severity", help="info, warning or critical."),
    model: str | None = typer.Option(None, "--model"),
    deployment: str | None = typer.Option(None, "--deployment"),
    team: str | None = typer.Option(None, "--team"),
    environment: str | None = typer.Option(None, "--environment"),
    notifiers: list[str] | None = typer.Option(
        None, "--notifier", help="A configured notifier (repeat; default: all)."
    ),
    recipients: list[str] | None = typer.Option(
        None, "--recipient", help="Also notify this person or team:<name> (repeat)."
    ),
    description: str | None = typer.Option(None, "--description"),
    rule_file: Path | None = typer.Option(
        None, "--file", dir_okay=False, help="A YAML or JSON file with the rule's fields."
    ),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Create a rule (the server validates it and names the field at fault)."""
    body: dict[str, Any] = _rule_file(rule_file) if rule_file is not None else {}
    given = {
        "name": name,
        "metric": metric,
        "threshold": threshold,
        "condition": condition,
        "op": op,
        "window": window,
        "for": for_,
        "baseline_windows": baseline_windows,
        "severity": severity,
        "model": model,
        "deployment": deployment,
        "team": team,
        "environment": environment,
        "notifiers": notifiers or None,
        "recipients": recipients or None,
        "description": description,
    }
    body.update({key: value for key, value in given.items() if value is not None})
    if "metric" not in body or "threshold" not in body:
        fail("--metric and --threshold are required (or give them in --file)")
    with _alerts(url, api_key) as alerts:
        created = alerts.rules.create(body)
    if as_json:
        _print_json(created)
        return
    typer.echo(f"created alert rule {created['name']}")


@rules_app.command("delete")
def delete_rule(
    name: str = typer.Argument(..., help="The rule's name."),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
) -> None:
    """Delete a rule created over the API (its history stays)."""
    with _alerts(url, api_key) as alerts:
        alerts.rules.delete(name)
    typer.echo(f"deleted alert rule {name}")


@rules_app.command("disable")
def disable_rule(
    name: str = typer.Argument(..., help="The rule's name."),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
) -> None:
    """Stop evaluating a rule created over the API."""
    with _alerts(url, api_key) as alerts:
        alerts.rules.disable(name)
    typer.echo(f"disabled alert rule {name}")


@rules_app.command("enable")
def enable_rule(
    name: str = typer.Argument(..., help="The rule's name."),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
) -> None:
    """Evaluate a disabled rule again."""
    with _alerts(url, api_key) as alerts:
        alerts.rules.enable(name)
    typer.echo(f"enabled alert rule {name}")
