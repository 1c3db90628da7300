"""`keel datasets ...`: versioned datasets through the Python SDK. Files are read here and sent
as rows, so the server needs no access to them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from keel.cli.output import console, fail, reported_errors
from keel.sdk import Keel
from keel.sdk.library import DatasetsAPI

__all__ = ["app", "parse_fractions"]

app = typer.Typer(
    name="datasets",
    help="Versioned datasets: from JSONL, CSV or Parquet files or production traffic.",
    no_args_is_help=True,
)

UrlOption = typer.Option(None, "--url", envvar="KEEL_URL", help="Keel server URL.")
KeyOption = typer.Option(None, "--api-key", envvar="KEEL_API_KEY", help="Keel API key.")
JsonOption = typer.Option(False, "--json", help="Print JSON.")


@contextmanager
def _datasets(url: str | None, api_key: str | None) -> Iterator[DatasetsAPI]:
    with reported_errors(), Keel(url, api_key=api_key) as client:
        try:
            yield client.datasets
        except ValueError as exc:  # a malformed file, read here before anything is sent
            fail(str(exc) or type(exc).__name__)


def parse_fractions(text: str) -> dict[str, float]:
    """`train=0.8,test=0.2` as {"train": 0.8, "test": 0.2}."""
    found: dict[str, float] = {}
    for part in text.split(","):
        name, equals, value = part.partition("=")
        try:
            if not equals or not name.strip():
                raise ValueError
            found[name.strip()] = float(value)
        except ValueError:
            fail(f"--splits: write NAME=FRACTION pairs, as train=0.8,test=0.2 (got {part!r})")
    return found


def _print_version(version: dict[str, Any]) -> None:
    note = "" if version.get("created", True) else " (same content; no new version)"
    splits = ", ".join(f"{name}: {count}" for name, count in version["splits"].items())
    typer.echo(f"{version['ref']} {version['digest']} rows {version['row_count']} ({splits}){note}")


@app.command("add")
def add(
    name: str = typer.Argument(..., help="The dataset's name."),
    file: Path | None = typer.Argument(
        None, exists=True, dir_okay=False, help="A .jsonl, .csv or .parquet file."
    ),
    format: str | None = typer.Option(None, "--format", help="jsonl, csv or parquet."),
    split: str | None = typer.Option(None, "--split", help="The split the rows go into."),
    splits: str | None = typer.Option(
        None, "--splits", help="Divide the rows by fractions: train=0.8,test=0.2."
    ),
    production: bool = typer.Option(
        False, "--from-production", help="Draw the rows from captured production calls."
    ),
    model: str | None = typer.Option(None, "--model", help="Production: this model's calls."),
    since: str | None = typer.Option(None, "--since", help="Production: from (ISO time)."),
    until: str | None = typer.Option(None, "--until", help="Production: before (ISO time)."),
    label: str | None = typer.Option(None, "--label", help="Production: feedback label."),
    thumbs: str | None = typer.Option(None, "--thumbs", help="Production: up or down."),
    feedback_name: str | None = typer.Option(
        None, "--feedback-name", help="Production: only feedback of this name."
    ),
    limit: int = typer.Option(1000, "--limit", help="Production: at most this many rows."),
    description: str | None = typer.Option(None, "--description", help="What the data is."),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Add a version of a dataset from a file or (with --from-production) from traffic."""
    if production == (file is not None):
        fail("give a FILE or --from-production (and not both)")
    fractions = parse_fractions(splits) if splits else None
    with _datasets(url, api_key) as datasets:
        if production:
            version = datasets.add_from_production(
                name,
                model=model,
                since=since,
                until=until,
                label=label,
                thumbs=thumbs,
                feedback_name=feedback_name,
                limit=limit,
                split=split,
                splits=fractions,
                description=description,
            )
        else:
            version = datasets.add(
                name, file, format=format, split=split, splits=fractions, description=description
            )
    if as_json:
        typer.echo(json.dumps(version, indent=2))
    else:
        _print_version(version)


@app.command("list")
def list_datasets(
    url: str | None = UrlOption, api_key: str | None = KeyOption, as_json: bool = JsonOption
) -> None:
    """Every dataset with its latest version."""
    with _datasets(url, api_key) as datasets:
        found = datasets.list()
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    if not found:
        typer.echo("No datasets yet; add one with: keel datasets add NAME FILE")
        return
    table = Table("name", "latest", "rows", "splits", "columns", "digest")
    for item in found:
        table.add_row(
            item["name"],
            str(item["latest_version"]),
            str(sum(item["splits"].values())),
            ", ".join(f"{k}: {v}" for k, v in item["splits"].items()),
            ", ".join(item["columns"]),
            item["digest"][:19],
        )
    console.print(table)


@app.command("show")
def show(
    ref: str = typer.Argument(..., help="NAME (the latest version) or NAME@VERSION."),
    rows: int = typer.Option(5, "--rows", help="How many rows to print (0 for none)."),
    split: str | None = typer.Option(None, "--split", help="Only this split's rows."),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """A version: digest, splits, columns, source, and its first rows."""
    with _datasets(url, api_key) as datasets:
        version = datasets.version(ref)
        sample = datasets.rows(version["ref"], split, limit=rows) if rows > 0 else []
    if as_json:
        typer.echo(json.dumps(version | {"rows": sample}, indent=2))
        return
    _print_version(version)
    typer.echo(f"columns: {', '.join(version['columns'])}")
    typer.echo(f"source: {json.dumps(version['source'])}")
    if version.get("description"):
        typer.echo(f"description: {version['description']}")
    for row in sample:
        typer.echo(json.dumps(row, ensure_ascii=False))


@app.command("export")
def export(
    ref: str = typer.Argument(..., help="NAME (the latest version) or NAME@VERSION."),
    out: Path = typer.Argument(..., dir_okay=False, help="A .jsonl, .csv or .parquet file."),
    format: str | None = typer.Option(None, "--format", help="jsonl, csv or parquet."),
    split: str | None = typer.Option(None, "--split", help="Only this split."),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
) -> None:
    """Write a version's rows to a file."""
    with _datasets(url, api_key) as datasets:
        written = datasets.export(ref, out, format=format, split=split)
    typer.echo(f"wrote {written}")
