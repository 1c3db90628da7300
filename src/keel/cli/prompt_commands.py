"""`keel prompts ...` (versioned, aliased prompt templates) and `keel scorers ...` (the scorer
API on the server), through the Python SDK."""

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

__all__ = ["app", "scorers_app"]

app = typer.Typer(
    name="prompts",
    help="Prompt templates (Jinja2): versions, aliases such as production, rendering.",
    no_args_is_help=True,
)
scorers_app = typer.Typer(
    name="scorers",
    help="Scorers: list what the server knows, score cases with one.",
    no_args_is_help=True,
)

UrlOption = typer.Option(None, "--url", envvar="KEEL_URL", help="Keel server URL.")
KeyOption = typer.Option(None, "--api-key", envvar="KEEL_API_KEY", help="Keel API key.")
JsonOption = typer.Option(False, "--json", help="Print JSON.")


@contextmanager
def _client(url: str | None, api_key: str | None) -> Iterator[Keel]:
    with reported_errors(), Keel(url, api_key=api_key) as client:
        try:
            yield client
        except ValueError as exc:
            fail(str(exc) or type(exc).__name__)


def _template_file(path: Path) -> Any:
    """A .json/.yaml file holds a list of chat messages (or {"messages": [...]}) or a string;
    any other file is a text template as is."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        fail(f"{path}: not UTF-8 text")
    if path.suffix.lower() not in (".json", ".yaml", ".yml"):
        return text
    import yaml

    try:
        value = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        fail(f"{path}: cannot read it: {exc}")
    if isinstance(value, dict) and "messages" in value:
        value = value["messages"]
    return value


def _variables(pairs: list[str], file: Path | None) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if file is not None:
        try:
            loaded = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            fail(f"--vars-file: {exc}")
        if not isinstance(loaded, dict):
            fail("--vars-file: a JSON object of name → value")
        found.update(loaded)
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not name:
            fail(f"--var: write NAME=VALUE (got {pair!r})")
        found[name] = value
    return found


def _print_version(version: dict[str, Any]) -> None:
    note = "" if version.get("created", True) else " (same content; no new version)"
    aliases = f" [{', '.join(version['aliases'])}]" if version.get("aliases") else ""
    variables = ", ".join(version["variables"]) or "none"
    typer.echo(
        f"{version['ref']}{aliases} {version['kind']} {version['digest']} "
        f"variables: {variables}{note}"
    )


@app.command("add")
def add(
    name: str = typer.Argument(..., help="The prompt's name."),
    file: Path | None = typer.Argument(
        None,
        exists=True,
        dir_okay=False,
        help="A text template, or a .json/.yaml list of chat messages.",
    ),
    text: str | None = typer.Option(None, "--text", help="The template text, inline."),
    variable: list[str] = typer.Option(
        [], "--var", help="Declare a variable (repeat); undeclared uses are refused."
    ),
    description: str | None = typer.Option(None, "--description", help="What it is for."),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Add a version of a prompt template."""
    if (file is None) == (text is None):
        fail("give a template FILE or --text (and not both)")
    template: Any = _template_file(file) if file is not None else text
    with _client(url, api_key) as client:
        version = client.prompts.add(
            name, template, description=description, variables=variable or None
        )
    if as_json:
        typer.echo(json.dumps(version, indent=2))
    else:
        _print_version(version)


@app.command("list")
def list_prompts(
    url: str | None = UrlOption, api_key: str | None = KeyOption, as_json: bool = JsonOption
) -> None:
    """Every prompt with its latest version and aliases."""
    with _client(url, api_key) as client:
        found = client.prompts.list()
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    if not found:
        typer.echo("No prompts yet; add one with: keel prompts add NAME FILE")
        return
    table = Table("name", "latest", "aliases", "variables", "description")
    for item in found:
        aliases = ", ".join(f"{k}→{v}" for k, v in item["aliases"].items())
        table.add_row(
            item["name"],
            str(item["latest_version"]),
            aliases,
            ", ".join(item["variables"]),
            item["description"] or "",
        )
    console.print(table)


@app.command("show")
def show(
    ref: str = typer.Argument(..., help="NAME, NAME@VERSION or NAME@ALIAS."),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """A version and its template."""
    with _client(url, api_key) as client:
        version = client.prompts.version(ref)
    if as_json:
        typer.echo(json.dumps(version, indent=2))
        return
    _print_version(version)
    template = version["template"]
    if isinstance(template, str):
        typer.echo(template)
    else:
        for message in template:
            typer.echo(f"[{message['role']}] {message['content']}")


@app.command("render")
def render(
    ref: str = typer.Argument(..., help="NAME, NAME@VERSION or NAME@ALIAS."),
    var: list[str] = typer.Option([], "--var", help="NAME=VALUE (repeat)."),
    vars_file: Path | None = typer.Option(
        None, "--vars-file", exists=True, dir_okay=False, help="A JSON object of variables."
    ),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Render a version with variables into chat messages."""
    variables = _variables(var, vars_file)
    with _client(url, api_key) as client:
        messages = client.prompts.render(ref, variables)
    if as_json:
        typer.echo(json.dumps(messages, indent=2, ensure_ascii=False))
        return
    for message in messages:
        typer.echo(f"[{message['role']}] {message['content']}")


@app.command("alias")
def alias(
    name: str = typer.Argument(..., help="The prompt's name."),
    alias_name: str = typer.Argument(..., metavar="ALIAS", help="production, staging, ..."),
    version: int | None = typer.Argument(None, help="The version to point it at."),
    history: bool = typer.Option(False, "--history", help="Print the alias's moves instead."),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
) -> None:
    """Point NAME@ALIAS at VERSION (the move is kept), or print its history."""
    with _client(url, api_key) as client:
        if history:
            for move in client.prompts.alias_history(name, alias_name):
                before = move["from_version"] if move["from_version"] is not None else "-"
                typer.echo(f"{move['at']} {before} → {move['to_version']} by {move['actor']}")
            return
        if version is None:
            fail("give the VERSION to point the alias at (or --history)")
        move = client.prompts.alias(name, alias_name, version)
    before = move["from_version"] if move["from_version"] is not None else "nothing"
    typer.echo(f"{name}@{alias_name}: {before} → {move['to_version']}")


@scorers_app.command("list")
def list_scorers(
    url: str | None = UrlOption, api_key: str | None = KeyOption, as_json: bool = JsonOption
) -> None:
    """The scorer types the server knows, with their options."""
    with _client(url, api_key) as client:
        found = client.scorers.list()
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    table = Table("type", "source", "options", "what it does")
    for item in found:
        table.add_row(item["type"], item["source"], ", ".join(item["options"]), item["summary"])
    console.print(table)


@scorers_app.command("score")
def score(
    scorer: str = typer.Argument(
        ..., help='A scorer type (exact_match) or a JSON spec: \'{"type": "regex", ...}\'.'
    ),
    cases: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="JSONL: {output, expected, inputs, ...} per line."
    ),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Score the cases in a JSONL file with one scorer, on the server."""
    spec: Any = scorer
    if scorer.lstrip().startswith("{"):
        try:
            spec = json.loads(scorer)
        except ValueError as exc:
            fail(f"SCORER: not a JSON object: {exc}")
    from keel.errors import KeelError
    from keel.tracking.dataset_files import read_rows

    try:
        rows = read_rows(cases, "jsonl")
    except KeelError as exc:
        fail(exc.message)
    with _client(url, api_key) as client:
        result = client.scorers.score(spec, rows)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    for index, item in enumerate(result["scores"], start=1):
        passed = "" if item["passed"] is None else (" pass" if item["passed"] else " fail")
        detail = f"  {item['detail']}" if item["detail"] else ""
        typer.echo(f"{index}: {number(item['value'])}{passed}{detail}")
    figures = ", ".join(f"{k} {number(v)}" for k, v in result["aggregate"].items())
    typer.echo(f"{result['scorer']}: {figures}")
