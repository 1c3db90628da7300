"""`keel drift MODEL[@alias]`: compute a drift report (or list stored ones) through the SDK."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

import typer
from rich.table import Table

from keel.cli.output import console, number, reported_errors
from keel.sdk import Keel

__all__ = ["drift"]

UrlOption = typer.Option(None, "--url", envvar="KEEL_URL", help="Keel server URL.")
KeyOption = typer.Option(None, "--api-key", envvar="KEEL_API_KEY", help="Keel API key.")


class ReferenceChoice(StrEnum):
    benchmark = "benchmark"
    window = "window"


def drift(
    model: str = typer.Argument(
        ..., help="A registry model (name, name@alias, name@3) or a gateway model id."
    ),
    window: str = typer.Option(
        "24h", "--window", "-w", help="The current window: 30m, 24h, 7d, or START/END (ISO-8601)."
    ),
    reference: ReferenceChoice = typer.Option(
        ReferenceChoice.window,
        "--reference",
        "-r",
        help="Compare with the registry version's benchmark run, or with a traffic window.",
    ),
    reference_window: str | None = typer.Option(
        None,
        "--reference-window",
        help="With --reference window: a duration (the period right before the current window) "
        "or START/END. Default: as long as the current window, right before it.",
    ),
    until: str | None = typer.Option(
        None, "--until", help="Where a duration window ends (ISO-8601); now if unset."
    ),
    history: bool = typer.Option(
        False, "--history", help="List the stored reports instead of computing one."
    ),
    limit: int = typer.Option(20, "--limit", min=1, max=1000, help="Reports listed by --history."),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Compare a model's recent traffic with its benchmark or an earlier window, and store
    the report (token lengths, error/refusal/PII rates, embeddings, accuracy)."""
    with reported_errors(), Keel(url, api_key=api_key) as client:
        if history:
            reports = client.drift.history(model, limit=limit)
        else:
            report = client.drift(
                model,
                window=window,
                reference=reference.value,
                reference_window=reference_window,
                until=until,
            )
    if history:
        if as_json:
            typer.echo(json.dumps(reports, indent=2))
        else:
            _print_history(reports)
        return
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    _print_report(report)


def _figure(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return number(round(value, 4)) if abs(value) >= 1e-4 or value == 0 else f"{value:.2e}"
    return str(value)


def _print_report(report: dict[str, Any]) -> None:
    verdict = "[red]DRIFT[/red]" if report["drifted"] else "[green]no drift[/green]"
    against = (
        f"benchmark run {report['run_id']} of {report['registry_version']}"
        if report["reference"] == "benchmark"
        else f"{report['reference_start']} .. {report['reference_end']}"
    )
    console.print(
        f"{report['target']}: {verdict} — {report['current_count']} requests "
        f"({report['window_start']} .. {report['window_end']}) against {against} "
        f"({report['reference_count']} requests)"
    )
    table = Table("check", "method", "statistic", "p", "threshold", "drifted", "note")
    for check in report["checks"]:
        table.add_row(
            check["name"],
            check["method"],
            _figure(check["statistic"]),
            _figure(check["p_value"]),
            str(check["threshold"]),
            "yes" if check["drifted"] else "",
            check["note"] or "",
        )
    console.print(table)


def _print_history(reports: list[dict[str, Any]]) -> None:
    table = Table("created", "target", "reference", "current", "drifted", "psi in", "mmd in p")
    for report in reports:
        metrics = report["metrics"]
        table.add_row(
            report["created_at"],
            report["target"],
            report["reference"],
            str(report["current_count"]),
            "yes" if report["drifted"] else "no",
            _figure(metrics.get("psi_input_tokens")),
            _figure(metrics.get("embedding_input_mmd_p")),
        )
    console.print(table)
