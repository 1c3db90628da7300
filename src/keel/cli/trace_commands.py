"""`keel trace REQUEST_ID`: a call's spans as a tree, with their durations."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import typer
from rich.markup import escape
from rich.tree import Tree

from keel.cli.output import console, reported_errors
from keel.sdk import Keel

__all__ = ["trace"]

UrlOption = typer.Option(None, "--url", envvar="KEEL_URL", help="Keel server URL.")
KeyOption = typer.Option(None, "--api-key", envvar="KEEL_API_KEY", help="Keel API key.")

# What each kind of span says on its line; `--attributes` shows everything.
_SUMMARY = (
    ("keel.deployment", "deployment"),
    ("keel.outcome", "outcome"),
    ("keel.cache", "cache"),
    ("keel.cache.result", "result"),
    ("keel.guardrails.rules", "rules"),
    ("keel.guardrails.blocked", "blocked by"),
    ("gen_ai.usage.input_tokens", "in"),
    ("gen_ai.usage.output_tokens", "out"),
    ("keel.cost_usd", "$"),
    ("http.response.status_code", "status"),
)


def trace(
    request_id: str = typer.Argument(..., help="The request id (x-keel-request-id)."),
    attributes: bool = typer.Option(
        False, "--attributes", "-a", help="Every attribute of every span."
    ),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show a request's trace: its attempts, cache lookup, guardrails and quota check, timed."""
    with reported_errors(), Keel(url, api_key=api_key) as client:
        found = client.trace(request_id)
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    console.print(trace_tree(found, attributes=attributes))


def trace_tree(found: dict[str, Any], *, attributes: bool = False) -> Tree:
    """The spans under their parents; a span whose parent Keel did not keep (the caller's) is
    a root. Each line: name, duration, start offset from the first span, and a summary."""
    spans: list[dict[str, Any]] = found["spans"]
    ids = {span["span_id"] for span in spans}
    origin = min((_moment(span["start_time"]) for span in spans), default=None)
    tree = Tree(
        f"[bold]trace {escape(found['trace_id'])}[/] · request {escape(found['request_id'])}"
    )
    nodes: dict[str, Tree] = {}
    pending = list(spans)
    # Parents come before their children in start order, but a child may start in the same
    # microsecond: place what can be placed until nothing moves.
    while pending:
        placed = []
        for span in pending:
            parent_id = span["parent_span_id"]
            if parent_id in ids and parent_id not in nodes:
                continue
            parent = nodes[parent_id] if parent_id in ids else tree
            nodes[span["span_id"]] = parent.add(_label(span, origin))
            if attributes:
                for name, value in sorted((span.get("attributes") or {}).items()):
                    nodes[span["span_id"]].add(f"[dim]{escape(name)} = {escape(_value(value))}[/]")
            placed.append(span)
        if not placed:
            break
        pending = [span for span in pending if span not in placed]
    return tree


def _label(span: dict[str, Any], origin: datetime | None) -> str:
    offset = (_moment(span["start_time"]) - origin).total_seconds() * 1000 if origin else 0.0
    parts = [
        f"[bold]{escape(span['name'])}[/]",
        f"[cyan]{span['duration_ms']:.1f} ms[/]",
        f"[dim]+{offset:.1f} ms[/]",
    ]
    span_attributes = span.get("attributes") or {}
    summary = [
        f"{label} {_value(span_attributes[name])}"
        for name, label in _SUMMARY
        if span_attributes.get(name) is not None
    ]
    if summary:
        parts.append(escape(" · ".join(summary)))
    if span["status"] == "error":
        parts.append(f"[red]error: {escape(span.get('status_message') or '')}[/]")
    return "  ".join(parts)


def _value(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_value(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _moment(text: str) -> datetime:
    return datetime.fromisoformat(text)
