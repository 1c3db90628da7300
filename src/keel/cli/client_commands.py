"""Commands that talk to a running Keel server through the Python SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich import box
from rich.table import Table

from keel import __version__
from keel.cli.output import console, reported_errors
from keel.sdk import Keel

__all__ = ["cache", "chat", "deployments", "embed", "models", "requests", "version"]

DEFAULT_MODEL = "smollm2-135m-instruct"
# A question asked from a terminal wants an answer, not a model running to the end of its
# context; ask for more with --max-tokens.
DEFAULT_MAX_TOKENS = 256

UrlOption = typer.Option(None, "--url", envvar="KEEL_URL", help="Keel server URL.")
KeyOption = typer.Option(None, "--api-key", envvar="KEEL_API_KEY", help="Keel API key.")


@contextmanager
def _client(url: str | None, api_key: str | None) -> Iterator[Keel]:
    with reported_errors(), Keel(url, api_key=api_key) as client:
        yield client


def models(
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the models Keel serves."""
    with _client(url, api_key) as client:
        found = client.models()
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    table = Table("id", "provider")
    for model in found:
        table.add_row(model["id"], model.get("owned_by", ""))
    console.print(table)


def chat(
    prompt: str = typer.Argument(..., help="The question or instruction."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Model id."),
    system: str | None = typer.Option(None, "--system", "-s", help="System prompt."),
    stream: bool = typer.Option(False, "--stream", help="Print tokens as they arrive."),
    max_tokens: int = typer.Option(
        DEFAULT_MAX_TOKENS, "--max-tokens", min=1, help="Longest answer, in tokens."
    ),
    temperature: float | None = typer.Option(None, "--temperature", min=0, max=2),
    no_cache: bool = typer.Option(
        False, "--no-cache", help="Don't answer from Keel's response cache (and don't store)."
    ),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
) -> None:
    """Ask a model one question."""
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    params = _given(max_tokens=max_tokens, temperature=temperature)
    if no_cache:
        params["cache"] = {"no_cache": True, "no_store": True}
    with _client(url, api_key) as client:
        if stream:
            _print_stream(client.chat_stream(model, messages, **params))
            return
        response = client.chat(model, messages, **params)
    typer.echo(response["choices"][0]["message"].get("content") or "")


def _print_stream(chunks: Iterator[dict[str, Any]]) -> None:
    for chunk in chunks:
        for choice in chunk.get("choices", []):
            text = (choice.get("delta") or {}).get("content")
            if text:
                typer.echo(text, nl=False)
    typer.echo()


def embed(
    text: list[str] = typer.Argument(..., help="One or more texts."),
    model: str = typer.Option("all-minilm-l6-v2", "--model", "-m"),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
) -> None:
    """Embed texts and print the vectors as JSON lines."""
    with _client(url, api_key) as client:
        response = client.embed(model, text)
    for item in response["data"]:
        typer.echo(json.dumps(item["embedding"]))


def requests(
    limit: int = typer.Option(20, "--limit", "-n", min=1, max=1000),
    model: str | None = typer.Option(None, "--model", "-m"),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    wide: bool = typer.Option(
        False, "--wide", "-w", help="Every column: date, deployment, request id, caller."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show the most recent request records."""
    with _client(url, api_key) as client:
        rows = client.requests(limit=limit, model=model)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    console.print(_requests_table(rows, wide=wide))


def _requests_table(rows: list[dict[str, Any]], *, wide: bool) -> Table:
    """At 80 columns: time of day, model, status, latency, tokens and cost, none of them cut;
    `--wide` adds the date, deployment, request id and caller."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    table.add_column("date" if wide else "time", no_wrap=True)
    table.add_column("model", overflow="fold")
    if wide:
        table.add_column("deployment", overflow="fold")
    table.add_column("status", justify="right", no_wrap=True)
    table.add_column("ms", justify="right", no_wrap=True)
    table.add_column("tokens", justify="right", no_wrap=True)
    table.add_column("cost $", justify="right", no_wrap=True)
    if wide:
        table.add_column("request id", no_wrap=True)
        table.add_column("caller", overflow="fold")
    for row in rows:
        created = str(row["created_at"])
        cells = [created[:19].replace("T", " ") if wide else created[11:19]]
        cells.append(row["model_requested"] or "")
        if wide:
            cells.append(row["deployment"] or "")
        status = str(row["status_code"])
        if row.get("cache") == "hit":
            status += " hit"
        cells += [
            status,
            f"{row['latency_ms']:.0f}",
            f"{row['prompt_tokens'] or 0}/{row['completion_tokens'] or 0}",
            "" if row["cost_usd"] is None else f"{row['cost_usd']:.6f}",
        ]
        if wide:
            cells += [row["id"], row.get("caller") or ""]
        table.add_row(*cells)
    return table


def deployments(
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show every deployment's circuit state, latency and load."""
    with _client(url, api_key) as client:
        rows = client.deployments()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("deployment", "group", "provider", "state", "latency ms", "in flight", "ok/fail")
    for row in rows:
        state = row["state"]
        if row["cooldown_remaining_s"]:
            state += f" ({row['cooldown_remaining_s']:.1f}s)"
        table.add_row(
            row["id"],
            row["group"],
            row["provider"],
            state,
            "" if row["latency_ms"] is None else f"{row['latency_ms']:.1f}",
            str(row["in_flight"]),
            f"{row['successes']}/{row['failures']}",
        )
    console.print(table)


def cache(
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show the response caches' sizes, hits and misses, and the precision guard's refusals."""
    with _client(url, api_key) as client:
        stats = client.cache_stats()
    if as_json:
        typer.echo(json.dumps(stats, indent=2))
        return
    if not stats["enabled"]:
        typer.echo("the response cache is off (cache.enabled: false)")
        return
    table = Table("cache", "figure", "count")
    for name, value in stats["exact"].items():
        table.add_row("exact", name, str(value))
    semantic = stats["semantic"]
    if semantic is None:
        table.add_row("semantic", "off", "")
    else:
        for name, value in semantic.items():
            if name == "refused":
                for reason, count in sorted(value.items()):
                    table.add_row("semantic", f"refused: {reason}", str(count))
            else:
                table.add_row("semantic", name, str(value))
    console.print(table)


def version() -> None:
    """Print Keel's version."""
    typer.echo(__version__)


def _given(**params: Any) -> dict[str, Any]:
    return {key: value for key, value in params.items() if value is not None}
