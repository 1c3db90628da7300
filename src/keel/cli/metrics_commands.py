"""`keel metrics`: a server's Prometheus metrics, readable in a terminal."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from keel.cli.client_commands import KeyOption, UrlOption
from keel.cli.output import console, fail, number, reported_errors
from keel.sdk import Keel

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["metrics"]

# Of a histogram, the count and the sum say most; the buckets are for Prometheus.
_HISTOGRAM_PARTS = ("_count", "_sum")


def metrics(
    prefix: str | None = typer.Option(
        None,
        "--filter",
        "-f",
        help="Only the metrics whose name starts with this (the keel_ prefix may be left out).",
    ),
    zeros: bool = typer.Option(False, "--zeros", help="Also show series whose value is 0."),
    as_json: bool = typer.Option(False, "--json", help="Print the samples as JSON."),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
) -> None:
    """Show the server's Prometheus metrics (GET /metrics): counters, gauges and histograms'
    counts and sums, with their labels."""
    with reported_errors(), Keel(url, api_key=api_key) as client:
        families = client.metrics()
    rows = [row for family in families for row in _rows(family)]
    if prefix is not None:
        rows = [
            row for row in rows if _matches(row["family"], prefix) or _matches(row["name"], prefix)
        ]
        if not rows:
            fail(f"--filter {prefix!r}: no metric's name starts with it")
    rows = [row for row in rows if zeros or row["value"] != 0]
    if as_json:
        samples = [{key: row[key] for key in ("name", "labels", "value")} for row in rows]
        typer.echo(json.dumps(samples, indent=2))
        return
    table = Table("metric", "labels", "value")
    for row in rows:
        labels = ", ".join(f"{name}={value}" for name, value in row["labels"].items())
        table.add_row(row["name"], labels, number(row["value"]))
    console.print(table)
    if not rows:
        typer.echo("(every series is 0; --zeros shows them)")


def _matches(name: str, prefix: str) -> bool:
    return name.startswith(prefix) or name.startswith(f"keel_{prefix}")


def _rows(family: Metric) -> list[dict[str, Any]]:
    rows = []
    for sample in family.samples:
        if sample.name.endswith("_created"):
            continue  # when a series started: noise in a terminal
        if family.type == "histogram" and not sample.name.endswith(_HISTOGRAM_PARTS):
            continue
        rows.append(
            {
                "family": family.name,
                "name": sample.name,
                "labels": dict(sample.labels),
                "value": sample.value,
            }
        )
    return rows
