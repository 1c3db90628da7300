"""`keel eval run|search`: eval suites and budget-aware configuration search.

Exit codes: 0 done; 1 bad input, an error, or a `--fail-under` threshold missed; 3 the run is
incomplete (the budget stopped it, or cases failed) — its partial leaderboard is still saved.
The runner, numpy and the server load only when a command runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from keel.cli.output import console, fail

if TYPE_CHECKING:
    from keel.config import Settings
    from keel.evals.leaderboard import Leaderboard

__all__ = ["app"]

INCOMPLETE_EXIT = 3

app = typer.Typer(
    help="Eval suites (prompts x models x dataset x scorers) and configuration search.",
    no_args_is_help=True,
)

UrlOption = typer.Option(
    None,
    "--url",
    help="A running Keel server (default: KEEL_BASE_URL or KEEL_URL; with neither, an "
    "embedded gateway is started in this process).",
)
KeyOption = typer.Option(
    None, "--api-key", envvar="KEEL_API_KEY", help="Keel API key; a sandbox key is recommended."
)
ConfigOption = typer.Option(
    None, "--config", "-c", help="keel.yaml for the embedded gateway (default: KEEL_CONFIG)."
)
EmbeddedOption = typer.Option(
    False, "--embedded", help="Start the gateway in this process even if KEEL_URL is set."
)


@contextmanager
def _reported() -> Iterator[None]:
    from keel.errors import KeelError

    try:
        yield
    except KeelError as exc:
        where = f" (field: {exc.param})" if exc.param else ""
        fail(f"{exc.message}{where}")
    except OSError as exc:
        fail(str(exc) or type(exc).__name__)


def _settings(config: Path | None) -> Settings | None:
    from keel.config_loading import load_settings

    return load_settings(config) if config is not None else None


def _target(url: str | None, embedded: bool) -> str | None:
    from keel.evals.api import resolve_url

    return None if embedded else resolve_url(url)


@contextmanager
def _progress(description: str) -> Iterator[Callable[[int, int], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@app.command("run")
def run(
    suite: Path = typer.Argument(..., help="The suite: a YAML (or JSON) file."),
    concurrency: int | None = typer.Option(
        None, "--concurrency", min=1, max=256, help="Calls in flight (default: the suite's)."
    ),
    model: list[str] = typer.Option([], "--model", help="Run only this model (repeatable)."),
    prompt: list[str] = typer.Option([], "--prompt", help="Run only this prompt (repeatable)."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Write the leaderboard: .csv, or JSON otherwise."
    ),
    fail_under: list[str] = typer.Option(
        [],
        "--fail-under",
        help="SCORER=VALUE: exit 1 when any row's figure is below it (repeatable).",
    ),
    register: str | None = typer.Option(
        None, "--register", help="MODEL@VERSION: record the result as that version's evaluation."
    ),
    state: Path | None = typer.Option(
        None, "--state", help="Resume state file (default: under KEEL_HOME/evals/)."
    ),
    no_resume: bool = typer.Option(False, "--no-resume", help="Run every case again."),
    no_save: bool = typer.Option(False, "--no-save", help="Don't save the result as a run."),
    experiment: str | None = typer.Option(
        None, "--experiment", help="The run's experiment (default: the suite's, or 'evals')."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    config: Path | None = ConfigOption,
    embedded: bool = EmbeddedOption,
) -> None:
    """Run every prompt x model x dataset row of a suite, score it, and print the leaderboard."""
    from keel.evals.api import run_suite
    from keel.evals.leaderboard import parse_fail_under

    with _reported():
        thresholds = parse_fail_under(fail_under)
        with _progress("eval") as progress:
            result = run_suite(
                suite,
                url=_target(url, embedded),
                api_key=api_key,
                settings=_settings(config),
                concurrency=concurrency,
                models=model or None,
                prompts=prompt or None,
                state_path=state,
                resume=not no_resume,
                save=not no_save,
                experiment=experiment,
                register=register,
                output=output,
                progress=progress,
            )
        below = result.leaderboard.below(thresholds)
    if as_json:
        summary = {
            "leaderboard": result.leaderboard.to_json(),
            "run_id": result.run_id,
            "planned": result.planned,
            "resumed": result.resumed,
            "new_calls": result.new_calls,
            "spent_usd": result.spent_usd,
            "skipped": result.skipped,
            "stopped": result.stopped,
            "failures": [vars(failure) for failure in result.failures],
            "registered": result.registered,
            "below_thresholds": below,
            "notes": result.notes,
        }
        typer.echo(json.dumps(summary, indent=2, default=str))
    else:
        console.print(leaderboard_table(result.leaderboard))
        console.print(
            f"{result.planned} cases: {result.resumed} resumed, "
            f"{len(result.records) - result.resumed} run, {len(result.failures)} failed, "
            f"{result.skipped} skipped; {result.new_calls} calls, "
            f"${result.spent_usd:.6f} spent" + (f"; run {result.run_id}" if result.run_id else "")
        )
        for failure in result.failures[:10]:
            console.print(
                f"[red]case {failure.case_id} ({failure.model} / {failure.prompt}):[/] "
                f"{failure.error}",
                markup=True,
                highlight=False,
            )
        if result.registered:
            console.print(f"registered {len(result.registered)} evaluation(s) on {register}")
        if result.stopped:
            console.print(f"[yellow]stopped: {result.stopped}[/]")
        for note in result.notes:
            console.print(f"[yellow]{note}[/]", highlight=False)
    if below:
        for line in below:
            typer.secho(f"below threshold: {line}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    if result.stopped or result.failures:
        raise typer.Exit(INCOMPLETE_EXIT)


@app.command("search")
def search(
    spec: Path = typer.Argument(..., help="The search spec: a YAML (or JSON) file."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Write every configuration tried: .csv, or JSON otherwise."
    ),
    register: str | None = typer.Option(
        None, "--register", help="MODEL@VERSION: record the chosen configuration's figures."
    ),
    no_save: bool = typer.Option(False, "--no-save", help="Don't save the result as a run."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    url: str | None = UrlOption,
    api_key: str | None = KeyOption,
    config: Path | None = ConfigOption,
    embedded: bool = EmbeddedOption,
) -> None:
    """Search models, prompts and parameters for the best configuration within a budget."""
    from keel.evals.search import run_search

    with _reported(), _progress("search") as progress:
        found = run_search(
            spec,
            url=_target(url, embedded),
            api_key=api_key,
            settings=_settings(config),
            save=not no_save,
            register=register,
            output=output,
            progress=progress,
        )
    if as_json:
        typer.echo(json.dumps(found.to_json(), indent=2, default=str))
    else:
        console.print(search_table(found.to_json()))
        chosen = found.chosen
        if chosen is None:
            console.print(f"[yellow]no configuration meets: {found.constraint}[/]")
        else:
            console.print(f"chosen ({found.constraint}): [bold]{chosen.label()}[/]")
        console.print(
            f"{found.calls} calls (the full grid is {found.grid_calls}), "
            f"${found.spent_usd:.6f} spent" + (f"; run {found.run_id}" if found.run_id else "")
        )
        if found.stopped:
            console.print(f"[yellow]stopped: {found.stopped}[/]")
        for note in found.notes:
            console.print(f"[yellow]{note}[/]", highlight=False)
    if found.chosen is None:
        raise typer.Exit(1)
    if found.stopped:
        raise typer.Exit(INCOMPLETE_EXIT)


def leaderboard_table(board: Leaderboard) -> Table:
    from keel.evals.leaderboard import format_figure

    table = Table(title=board.title)
    for column in ("model", "prompt", "cases", "errors", *board.scorer_names):
        table.add_column(column)
    for column in ("p50 ms", "p95 ms", "tokens/1k req", "USD/1k req"):
        table.add_column(column, justify="right")
    for row in board.rows:
        figures = [format_figure(row.scores.get(name)) for name in board.scorer_names]
        table.add_row(
            row.model,
            row.prompt,
            str(row.cases),
            str(row.errors),
            *figures,
            _fmt(row.latency_p50_ms, 1),
            _fmt(row.latency_p95_ms, 1),
            _fmt(row.tokens_per_1k_requests, 0),
            _fmt(row.cost_per_1k_requests_usd, 6),
        )
    return table


def search_table(found: dict[str, Any]) -> Table:
    table = Table(title=f"search: {found['objective']} (Pareto front marked *)")
    for column in ("", "model", "prompt", "params", "cases", found["objective"]):
        table.add_column(column)
    for column in ("p50 ms", "USD/1k req"):
        table.add_column(column, justify="right")
    for trial in found["trials"]:
        table.add_row(
            "*" if trial["pareto"] else "",
            trial["model"],
            trial["prompt"],
            json.dumps(trial["params"], sort_keys=True),
            str(trial["cases"]),
            _fmt(trial["quality"], 3),
            _fmt(trial["latency_p50_ms"], 1),
            _fmt(trial["cost_per_1k_requests_usd"], 6),
        )
    return table


def _fmt(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"
