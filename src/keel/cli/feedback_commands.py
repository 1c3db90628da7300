"""`keel feedback` and `keel quality`: feedback on requests, and the quality computed from it,
through the Python SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich import box
from rich.table import Table

from keel.cli.output import console, fail, number, reported_errors
from keel.sdk import Keel

__all__ = ["feedback", "quality"]

_SOURCES = ("human", "code", "llm_judge")
_GROUPINGS = ("registry_version", "deployment")

UrlOption = typer.Option(None, "--url", envvar="KEEL_URL", help="Keel server URL.")
KeyOption = typer.Option(None, "--api-key", envvar="KEEL_API_KEY", help="Keel API key.")
JsonOption = typer.Option(False, "--json", help="Print JSON.")


@contextmanager
def _client(url: str | None, api_key: str | None) -> Iterator[Keel]:
    with reported_errors(), Keel(url, api_key=api_key) as client:
        yield client


def feedback(
    request_id: str = typer.Argument(..., help="The request's id (x-keel-request-id)."),
    thumbs: str | None = typer.Option(None, "--thumbs", help="up or down."),
    label: str | None = typer.Option(None, "--label", help="The class the model answered."),
    expected: str | None = typer.Option(None, "--expected", help="The class it should have."),
    score: float | None = typer.Option(None, "--score", help="A numeric score, e.g. 0.8."),
    correction: str | None = typer.Option(None, "--correction", help="The corrected output."),
    comment: str | None = typer.Option(None, "--comment", help="Free text."),
    source: str = typer.Option("human", "--source", help="human, code or llm_judge."),
    name: str = typer.Option(
        "default", "--name", help="What is judged; the same source and name again replaces it."
    ),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Send feedback on a request; with no feedback option, list the feedback it has."""
    if thumbs is not None and thumbs not in ("up", "down"):
        fail(f"--thumbs: {thumbs!r} is not up or down")
    if source not in _SOURCES:
        fail(f"--source: {source!r} is not one of {', '.join(_SOURCES)}")
    if (label is None) != (expected is None):
        fail("--label and --expected go together: a label is scored against its expected value")
    given = (thumbs, label, score, correction, comment)
    with _client(url, api_key) as client:
        if all(value is None for value in given):
            rows = client.feedback.list(request_id)
            _print_listing(rows, as_json=as_json)
            return
        stored = client.feedback(
            request_id,
            thumbs=thumbs,
            label=label,
            expected=expected,
            score=score,
            correction=correction,
            comment=comment,
            source=source,
            name=name,
        )
    if as_json:
        typer.echo(json.dumps(stored, indent=2))
        return
    verb = "replaced" if stored["replaced"] else "recorded"
    typer.echo(f"{verb} feedback {stored['source']}/{stored['name']} on {stored['request_id']}")


def _print_listing(rows: list[dict[str, Any]], *, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no feedback on this request yet")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in ("source", "name", "thumbs", "label", "expected", "score", "by", "updated"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row["source"],
            row["name"],
            row["thumbs"] or "",
            row["label"] or "",
            row["expected"] or "",
            "" if row["score"] is None else number(row["score"]),
            row["created_by"],
            row["updated_at"][:19].replace("T", " "),
        )
    console.print(table)
    for row in rows:
        for field in ("correction", "comment"):
            if row[field]:
                typer.echo(f"{row['source']}/{row['name']} {field}: {row[field]}")


def quality(
    model: str = typer.Argument(..., help="The model id requests named."),
    window: str = typer.Option("24h", "--window", "-w", help="30m, 24h, 7d, 2w ..."),
    by: str | None = typer.Option(None, "--by", help="registry_version or deployment."),
    registry_version: str | None = typer.Option(
        None, "--registry-version", help="Only this version, e.g. support-bot@3."
    ),
    deployment: str | None = typer.Option(None, "--deployment", help="Only this deployment."),
    source: str | None = typer.Option(None, "--source", help="Only human, code or llm_judge."),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Accuracy, precision, recall and F1 of a model, from labelled feedback."""
    if by is not None and by not in _GROUPINGS:
        fail(f"--by: {by!r} is not one of {', '.join(_GROUPINGS)}")
    with _client(url, api_key) as client:
        report = client.quality(
            model,
            window=window,
            by=by,
            registry_version=registry_version,
            deployment=deployment,
            source=source,
        )
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    overall = report["overall"]
    typer.echo(f"{model}, last {window}: {overall['count']} verdicts")
    rows = [("all", overall)]
    rows += [(str(group[by] or "(none)"), group) for group in report.get("groups", [])]
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in (by or "", "count", "accuracy", "precision", "recall", "f1"):
        table.add_column(column, justify="left" if not column or column == by else "right")
    for key, summary in rows:
        table.add_row(
            key,
            str(summary["count"]),
            *(
                _ratio(summary[metric])
                for metric in ("accuracy", "precision_macro", "recall_macro", "f1_macro")
            ),
        )
    console.print(table)
    classes = overall["per_class"]
    if classes:
        per_class = Table("class", "precision", "recall", "f1", "support", box=box.SIMPLE_HEAD)
        for label, scores in classes.items():
            per_class.add_row(
                label,
                _ratio(scores["precision"]),
                _ratio(scores["recall"]),
                _ratio(scores["f1"]),
                str(scores["support"]),
            )
        console.print(per_class)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
