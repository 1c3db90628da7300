"""`keel registry ...` and `keel lineage`: the model registry through the Python SDK."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.table import Table
from rich.tree import Tree

from keel.cli.output import console, fail, number, reported_errors
from keel.sdk import Keel
from keel.sdk.registry import RegistryAPI, parse_gate

__all__ = ["app", "lineage"]

app = typer.Typer(
    name="registry",
    help="The model registry: cards, versions, aliases, promotions, gates, evaluations.",
    no_args_is_help=True,
)

UrlOption = typer.Option(None, "--url", envvar="KEEL_URL", help="Keel server URL.")
KeyOption = typer.Option(None, "--api-key", envvar="KEEL_API_KEY", help="Keel API key.")
ActorOption = typer.Option(
    None, "--actor", envvar="KEEL_ACTOR", help="Act as this name (x-keel-actor; open mode only)."
)
RolesOption = typer.Option(
    None,
    "--roles",
    envvar="KEEL_ROLES",
    help="Comma list of roles to act with (x-keel-roles; open mode only).",
)
JsonOption = typer.Option(False, "--json", help="Print JSON.")


@contextmanager
def _registry(
    url: str | None, api_key: str | None, actor: str | None, roles: str | None
) -> Iterator[RegistryAPI]:
    role_list = [role.strip() for role in roles.split(",") if role.strip()] if roles else None
    with reported_errors(), Keel(url, api_key=api_key) as client:
        try:
            yield client.registry.as_actor(actor, role_list)
        except ValueError as exc:  # a card file that isn't UTF-8 (UnicodeDecodeError)
            fail(str(exc) or type(exc).__name__)


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


@app.command("add")
def add(
    card: Path = typer.Argument(..., exists=True, dir_okay=False, help="A YAML or JSON card."),
    version_of: str | None = typer.Option(
        None, "--version-of", help="Add the card as a new version of this existing model."
    ),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    actor: str | None = ActorOption,
    roles: str | None = RolesOption,
) -> None:
    """Register a model card (a new model, or with --version-of a new version)."""
    with _registry(url, api_key, actor, roles) as registry:
        record = registry.add(card, name=version_of)
    note = "" if record.get("created", True) else " (card unchanged; no new version)"
    typer.echo(f"{record['name']}@{record['number']} {record['stage']} {record['digest']}{note}")


@app.command("list")
def list_models(
    include_archived: bool = typer.Option(False, "--all", help="Include archived models."),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """List the registered models."""
    with _registry(url, api_key, None, None) as registry:
        models = registry.list(include_archived=include_archived)
    if as_json:
        _print_json(models)
        return
    table = Table("name", "latest", "aliases", "archived", "created by")
    for model in models:
        aliases = ", ".join(f"{a}→{v}" for a, v in sorted((model.get("aliases") or {}).items()))
        table.add_row(
            model["name"],
            str(model["latest"]),
            aliases,
            "yes" if model.get("archived") else "",
            model.get("created_by", ""),
        )
    console.print(table)


@app.command("show")
def show(
    reference: str = typer.Argument(..., help="NAME, NAME@VERSION or NAME@ALIAS."),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
) -> None:
    """Show a model (its versions and aliases) or one version (its card), as JSON."""
    with _registry(url, api_key, None, None) as registry:
        _print_json(registry.show(reference))


@app.command("diff")
def diff(
    name: str = typer.Argument(...),
    a: str = typer.Argument(..., help="Version number or alias."),
    b: str = typer.Argument(..., help="Version number or alias."),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
) -> None:
    """What changed in the card between two versions."""
    with _registry(url, api_key, None, None) as registry:
        _print_json(registry.diff(name, a, b))


@app.command("export")
def export(
    name: str = typer.Argument(...),
    format: str = typer.Option("yaml", "--format", "-f", help="yaml, json or huggingface."),
    version: int | None = typer.Option(None, "--version", min=1, help="Default: latest."),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
) -> None:
    """Print a version's card as YAML, JSON or Hugging Face metadata."""
    if format not in ("yaml", "json", "huggingface"):
        fail(f"--format: {format!r} is not one of yaml, json, huggingface")
    with _registry(url, api_key, None, None) as registry:
        text = registry.export(name, format=format, version=version)
    typer.echo(text.rstrip("\n"))


@app.command("alias")
def alias(
    name: str = typer.Argument(...),
    alias_name: str = typer.Argument(..., metavar="ALIAS"),
    version: int = typer.Argument(..., min=1),
    reason: str = typer.Option(..., "--reason", help="Why (kept in the alias history)."),
    expected: int | None = typer.Option(
        None, "--expected", min=1, help="Move only if the alias still points at this version."
    ),
    approval: str | None = typer.Option(
        None, "--approval", help="For staging/production: the approved promotion's id."
    ),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    actor: str | None = ActorOption,
    roles: str | None = RolesOption,
) -> None:
    """Point an alias at a version."""
    with _registry(url, api_key, actor, roles) as registry:
        move = registry.alias(
            name,
            alias_name,
            version,
            reason=reason,
            expected_version=expected,
            approval_id=approval,
        )
    was = move.get("from_version")
    typer.echo(f"{name}@{alias_name}: {was if was is not None else '-'} -> {move['to_version']}")


@app.command("history")
def history(
    name: str = typer.Argument(...),
    alias_name: str | None = typer.Option(None, "--alias", help="One alias only."),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Every alias move of a model: who, when, from, to, why."""
    with _registry(url, api_key, None, None) as registry:
        moves = registry.history(name, alias_name)
    if as_json:
        _print_json(moves)
        return
    table = Table("time", "alias", "from", "to", "actor", "reason")
    for move in moves:
        was = move.get("from_version")
        table.add_row(
            move["at"][:19],
            move["alias"],
            "-" if was is None else str(was),
            str(move["to_version"]),
            move["actor"],
            move["reason"],
        )
    console.print(table)


@app.command("promote")
def promote(
    name: str = typer.Argument(...),
    version: int = typer.Argument(..., min=1),
    stage: str = typer.Argument(..., help="staging or production."),
    comment: str | None = typer.Option(None, "--comment"),
    expires_in: int | None = typer.Option(None, "--expires-in", min=1, help="Seconds."),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    actor: str | None = ActorOption,
    roles: str | None = RolesOption,
) -> None:
    """Request a promotion; another maintainer approves it."""
    with _registry(url, api_key, actor, roles) as registry:
        found = registry.promote(name, version, stage, comment=comment, expires_in_s=expires_in)
    typer.echo(f"{found['id']} {found['status']}: {name}@{version} -> {stage}")


@app.command("approve")
def approve(
    promotion_id: str = typer.Argument(..., metavar="ID"),
    comment: str | None = typer.Option(None, "--comment"),
    override_gates: bool = typer.Option(
        False, "--override-gates", help="Approve although quality gates fail (admins)."
    ),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    actor: str | None = ActorOption,
    roles: str | None = RolesOption,
) -> None:
    """Approve a promotion request."""
    with _registry(url, api_key, actor, roles) as registry:
        found = registry.approve(promotion_id, comment=comment, override_gates=override_gates)
    typer.echo(f"{found['id']} {found['status']}")


@app.command("reject")
def reject(
    promotion_id: str = typer.Argument(..., metavar="ID"),
    comment: str | None = typer.Option(None, "--comment"),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    actor: str | None = ActorOption,
    roles: str | None = RolesOption,
) -> None:
    """Reject a promotion request."""
    with _registry(url, api_key, actor, roles) as registry:
        found = registry.reject(promotion_id, comment=comment)
    typer.echo(f"{found['id']} {found['status']}")


@app.command("promotions")
def promotions(
    model: str | None = typer.Option(None, "--model", "-m"),
    status: str | None = typer.Option(None, "--status", help="pending, approved, rejected..."),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """List promotion requests."""
    with _registry(url, api_key, None, None) as registry:
        found = registry.promotions(model=model, status=status)
    if as_json:
        _print_json(found)
        return
    table = Table("id", "model", "version", "stage", "status", "requested by", "time")
    for item in found:
        table.add_row(
            item["id"],
            item["model"],
            str(item["version"]),
            item["stage"],
            item["status"],
            item["requested_by"],
            item["created_at"][:19],
        )
    console.print(table)


@app.command("gates")
def gates(
    name: str = typer.Argument(...),
    stage: str = typer.Argument(...),
    gate: list[str] = typer.Option(
        [], "--gate", "-g", help='"accuracy>=0.8" or "accuracy@DATASET>=0.8"; repeatable.'
    ),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    actor: str | None = ActorOption,
    roles: str | None = RolesOption,
) -> None:
    """Set the quality gates for promotion to a stage (no --gate clears them)."""
    try:
        parsed = [parse_gate(text) for text in gate]
    except ValueError as exc:
        fail(f"--gate: {exc}")
    with _registry(url, api_key, actor, roles) as registry:
        registry.gates(name, stage, parsed)
    described = ", ".join(_describe_gate(item) for item in parsed) or "none"
    typer.echo(f"{name} -> {stage} gates: {described}")


def _describe_gate(gate: dict[str, Any]) -> str:
    where = f" on {gate['dataset']}" if gate.get("dataset") else ""
    return f"{gate['metric']}{where} {gate['op']} {number(gate['threshold'])}"


@app.command("evaluate")
def evaluate(
    name: str = typer.Argument(...),
    version: int = typer.Argument(..., min=1),
    metric: str = typer.Argument(...),
    value: float = typer.Argument(...),
    dataset: str | None = typer.Option(None, "--dataset"),
    run_id: str | None = typer.Option(None, "--run-id"),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    actor: str | None = ActorOption,
    roles: str | None = RolesOption,
) -> None:
    """Record an evaluation result for a version (what quality gates check)."""
    if not math.isfinite(value):
        fail(f"VALUE: {value!r} is not a finite number")
    with _registry(url, api_key, actor, roles) as registry:
        found = registry.evaluate(name, version, metric, value, dataset=dataset, run_id=run_id)
    typer.echo(f"{name}@{version} {found['metric']}={number(found['value'])} ({found['id']})")


@app.command("archive")
def archive(
    name: str = typer.Argument(...),
    version: int | None = typer.Option(None, "--version", min=1, help="Only this version."),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    actor: str | None = ActorOption,
    roles: str | None = RolesOption,
) -> None:
    """Archive a model (or one version): it is no longer listed or served."""
    with _registry(url, api_key, actor, roles) as registry:
        registry.archive(name, version=version)
    typer.echo(f"archived {name}" + (f"@{version}" if version else ""))


def lineage(
    entity: str = typer.Argument(..., help="KIND:ID, e.g. model_version:support-bot@2."),
    direction: str = typer.Option("both", "--direction", help="upstream, downstream or both."),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Show what an entity came from and what was derived from it, as a tree."""
    kind, sep, entity_id = entity.partition(":")
    if not sep or not kind or not entity_id:
        fail(f"ENTITY: {entity!r} is not KIND:ID")
    if direction not in ("upstream", "downstream", "both"):
        fail(f"--direction: {direction!r} is not one of upstream, downstream, both")
    with _registry(url, api_key, None, None) as registry:
        graph = registry.lineage(kind, entity_id, direction=direction)
    if as_json:
        _print_json(graph)
        return
    console.print(lineage_tree(graph))


def lineage_tree(node: dict[str, Any]) -> Tree:
    """A lineage node ({entity, upstream, downstream, ...}) as a Rich tree."""
    tree = Tree(_node_label(node))
    _add_branches(tree, node)
    return tree


def _node_label(node: dict[str, Any]) -> str:
    entity = node["entity"]
    relation = f"[dim]{node['relation']}[/dim] " if node.get("relation") else ""
    cycle = " [yellow](cycle)[/yellow]" if node.get("cycle") else ""
    return f"{relation}[bold]{entity['kind']}[/bold]:{entity['id']}{cycle}"


def _add_branches(tree: Tree, node: dict[str, Any]) -> None:
    for key, arrow in (("upstream", "⬆ upstream"), ("downstream", "⬇ downstream")):
        children = node.get(key) or []
        if not children:
            continue
        branch = tree.add(f"[cyan]{arrow}[/cyan]")
        for child in children:
            sub = branch.add(_node_label(child))
            _add_branches(sub, child)
