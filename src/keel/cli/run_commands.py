"""`keel runs list|show|compare` and `keel experiments list`: tracked runs.

With `--url` (or `KEEL_BASE_URL` / `KEEL_URL`) the commands ask that Keel server; without,
they read the embedded store (the `KEEL_HOME` database) where scripts log when no server is
configured. The store loads only when a command runs, so `keel --help` stays instant.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from keel.cli.output import console, fail, reported_errors

if TYPE_CHECKING:
    from keel.tracking.runs import TrackingBackend

__all__ = ["experiments_app", "runs_app"]

runs_app = typer.Typer(name="runs", help="Tracked runs: list, show, compare.", no_args_is_help=True)
experiments_app = typer.Typer(
    name="experiments", help="Experiments and their runs.", no_args_is_help=True
)

UrlOption = typer.Option(
    None,
    "--url",
    envvar=["KEEL_BASE_URL", "KEEL_URL"],
    help="Keel server URL; without one, the embedded store under KEEL_HOME.",
)
KeyOption = typer.Option(None, "--api-key", envvar="KEEL_API_KEY", help="Keel API key.")
JsonOption = typer.Option(False, "--json", help="Print JSON.")


@contextmanager
def _tracking(url: str | None, api_key: str | None) -> Iterator[TrackingBackend]:
    with reported_errors():
        if url:
            from keel.sdk import Keel

            with Keel(url, api_key=api_key) as client:
                yield client.tracking
            return
        from keel.errors import KeelError
        from keel.tracking.embedded import EmbeddedTracking

        try:
            embedded = EmbeddedTracking.from_environment()
        except KeelError as exc:
            fail(exc.message)
        try:
            yield embedded
        finally:
            embedded.close()


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


def _value(value: Any) -> str:
    from keel.tracking.views import format_value

    return format_value(value)


def _environment(run: dict[str, Any]) -> str:
    environment = run.get("environment") or "—"
    return f"[bold red]{environment}[/]" if environment == "production" else str(environment)


@runs_app.command("list")
def list_runs(
    experiment: str | None = typer.Option(None, "--experiment", "-e", help="Only this one."),
    status: str | None = typer.Option(None, "--status", help="running, finished or failed."),
    limit: int = typer.Option(50, "--limit", min=1, max=1000, help="How many, newest first."),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Runs, newest first, with their last metric values."""
    with _tracking(url, api_key) as tracking:
        runs = tracking.list_runs(experiment=experiment, status=status, limit=limit)
    if as_json:
        _print_json(runs)
        return
    metrics = sorted({key for run in runs for key in run["metrics"]})[:6]
    table = Table()
    # Ids are what `show` and `compare` take: wrapped, never cut.
    table.add_column("run", overflow="fold")
    for header in ("experiment", "status", "environment", "started", *metrics):
        table.add_column(header)
    for run in runs:
        table.add_row(
            run["id"] + (f" ({run['name']})" if run.get("name") else ""),
            run["experiment"],
            run["status"],
            _environment(run),
            (run.get("started_at") or "")[:19],
            *(_value((run["metrics"].get(key) or {}).get("last")) for key in metrics),
        )
    console.print(table)


@runs_app.command("show")
def show_run(
    run_id: str = typer.Argument(..., help="The run's id."),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """One run: provenance, params, metrics, tags, inputs and artifacts."""
    with _tracking(url, api_key) as tracking:
        run = tracking.get_run(run_id)
    if as_json:
        _print_json(run)
        return
    about = Table("field", "value", title=f"run {run['id']}")
    for field in (
        "experiment", "name", "status", "error", "created_by", "environment", "key_id",
        "started_at", "ended_at", "git_commit", "git_dirty", "python_version",
        "packages_digest", "host",
    ):  # fmt: skip
        shown = _environment(run) if field == "environment" else _value(run.get(field))
        about.add_row(field, shown)
    console.print(about)
    if run["params"]:
        params = Table("param", "value")
        for key, value in run["params"].items():
            params.add_row(key, _value(value))
        console.print(params)
    if run["metrics"]:
        metrics = Table("metric", "last", "step", "min", "max", "points")
        for key, summary in run["metrics"].items():
            metrics.add_row(
                key,
                *(_value(summary[k]) for k in ("last", "step", "min", "max", "count")),
            )
        console.print(metrics)
    for rows, columns in (
        ([[k, v] for k, v in run["tags"].items()], ("tag", "value")),
        (
            [[i["kind"], i["ref"], _value(i.get("version")), i["relation"]] for i in run["inputs"]],
            ("input", "ref", "version", "relation"),
        ),
        (
            [[a["name"], str(a["size"]), a["uri"]] for a in run["artifacts"]],
            ("artifact", "bytes", "stored at"),
        ),
    ):
        if rows:
            table = Table(*columns)
            for row in rows:
                table.add_row(*row)
            console.print(table)


@runs_app.command("compare")
def compare_runs(
    run_ids: list[str] = typer.Argument(..., help="Two or more run ids."),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    only_differences: bool = typer.Option(
        False, "--diff", help="Only the params and metrics that differ."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Runs side by side: params and metrics (last values); differing rows are highlighted."""
    if len(run_ids) < 2:
        fail("compare needs at least two run ids")
    with _tracking(url, api_key) as tracking:
        found = tracking.compare(run_ids)
    if as_json:
        _print_json(found)
        return
    table = Table("", *(run["name"] or run["id"] for run in found["runs"]))
    for section, differing in (("params", "differing_params"), ("metrics", "differing_metrics")):
        for key, values in found[section].items():
            changed = key in found[differing]
            if only_differences and not changed:
                continue
            label = key if section == "params" else f"{key} (metric)"
            table.add_row(
                f"[bold yellow]{label}[/]" if changed else label,
                *(_value(value) for value in values),
                style="yellow" if changed else None,
            )
    console.print(table)


@experiments_app.command("list")
def list_experiments(
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Experiments, with how many runs each has."""
    with _tracking(url, api_key) as tracking:
        experiments = tracking.list_experiments()
    if as_json:
        _print_json(experiments)
        return
    table = Table("experiment", "runs", "last run", "created by")
    for experiment in experiments:
        table.add_row(
            experiment["name"],
            str(experiment["runs"]),
            (experiment.get("last_run_at") or "—")[:19],
            experiment["created_by"],
        )
    console.print(table)
