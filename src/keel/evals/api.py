"""`run_suite(...)`: a suite from start to leaderboard, as a Python call.

With `url` (or KEEL_BASE_URL / KEEL_URL) the suite runs against that server with `api_key`
(or KEEL_API_KEY) — use a sandbox key, so eval traffic is labelled `environment=sandbox` and
counts against the sandbox's quotas. Without one, the gateway is started in this process from
the local configuration (KEEL_CONFIG, KEEL_HOME) and stopped afterwards.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from keel.evals.client import connect
from keel.evals.publish import leaderboard_metrics, register_result, save_run
from keel.evals.runner import EvalResult, Ledger, execute, leaderboard_of, prepare
from keel.evals.state import ResumeState, default_state_path
from keel.evals.suite import SuiteSpec, load_suite

if TYPE_CHECKING:
    from keel.config import Settings

__all__ = ["arun_suite", "resolve_url", "run_blocking", "run_suite"]

T = TypeVar("T")
DEFAULT_EXPERIMENT = "evals"


def resolve_url(url: str | None) -> str | None:
    return url or os.environ.get("KEEL_BASE_URL") or os.environ.get("KEEL_URL") or None


def run_blocking(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to the end from sync code — also inside Jupyter, whose own event loop
    is already running (then on a worker thread with a loop of its own)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_awaited(factory))
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(_awaited(factory))).result()


async def _awaited(factory: Callable[[], Awaitable[T]]) -> T:
    return await factory()


def run_suite(
    suite: str | Path | Mapping[str, Any] | SuiteSpec,
    *,
    url: str | None = None,
    api_key: str | None = None,
    settings: Settings | None = None,
    http: httpx.AsyncClient | None = None,
    concurrency: int | None = None,
    models: list[str] | None = None,
    prompts: list[str] | None = None,
    state_path: str | Path | None = None,
    resume: bool = True,
    save: bool = True,
    experiment: str | None = None,
    register: str | None = None,
    output: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvalResult:
    """Run `suite` (a file, a dict or a SuiteSpec) and return its result; see `arun_suite`."""
    return run_blocking(
        lambda: arun_suite(
            suite,
            url=url,
            api_key=api_key,
            settings=settings,
            http=http,
            concurrency=concurrency,
            models=models,
            prompts=prompts,
            state_path=state_path,
            resume=resume,
            save=save,
            experiment=experiment,
            register=register,
            output=output,
            progress=progress,
        )
    )


async def arun_suite(
    suite: str | Path | Mapping[str, Any] | SuiteSpec,
    *,
    url: str | None = None,
    api_key: str | None = None,
    settings: Settings | None = None,
    http: httpx.AsyncClient | None = None,
    concurrency: int | None = None,
    models: list[str] | None = None,
    prompts: list[str] | None = None,
    state_path: str | Path | None = None,
    resume: bool = True,
    save: bool = True,
    experiment: str | None = None,
    register: str | None = None,
    output: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvalResult:
    """Check the suite, run its cases (skipping those `state_path` already holds when
    `resume`), build the leaderboard, save it as a run (`save`), register it on
    `register` (MODEL@VERSION) and write it to `output` (.csv or .json)."""
    spec = suite if isinstance(suite, SuiteSpec) else load_suite(suite)
    url = None if http is not None else resolve_url(url)
    api_key = api_key or os.environ.get("KEEL_API_KEY") or None
    if register is not None:
        from keel.evals.publish import parse_model_version

        parse_model_version(register)  # a malformed target fails before any call
    async with connect(url, api_key=api_key, settings=settings, http=http) as client:
        ledger = Ledger(spec.budget)
        prepared = await prepare(spec, client, ledger=ledger, models=models, prompts=prompts)
        path = _state_path(state_path, settings, prepared.suite, prepared.digest)
        state = ResumeState(path if resume else None)
        identity = await client.whoami()
        environment = identity.get("environment") if isinstance(identity, dict) else None
        records, failures, resumed, skipped = await execute(
            prepared,
            client,
            state,
            ledger,
            concurrency=concurrency or prepared.suite.concurrency,
            progress=progress,
            environment=environment,
        )
        board = leaderboard_of(prepared, records, failures)
        result = EvalResult(
            suite=prepared.suite,
            digest=prepared.digest,
            dataset_id=prepared.dataset_id,
            leaderboard=board,
            records=records,
            failures=failures,
            planned=len(prepared.cases),
            resumed=resumed,
            new_calls=ledger.calls,
            spent_usd=ledger.spent_usd,
            skipped=skipped,
            stopped=ledger.stopped,
            environment=environment,
            state_path=path if resume else None,
        )
        if save:
            try:
                result.run_id = await asyncio.to_thread(
                    _save, result, experiment, url, api_key, settings
                )
            except Exception as exc:  # the leaderboard is still returned and written
                result.notes.append(f"the run was not saved: {exc}")
        if register is not None:
            result.registered = await register_result(
                client, board, register, run_id=result.run_id, dataset_id=prepared.dataset_id
            )
    if output is not None:
        board.write(output)
    return result


def _state_path(
    given: str | Path | None, settings: Settings | None, suite: SuiteSpec, digest: str
) -> Path:
    if given is not None:
        return Path(given).expanduser()
    home = settings.home if settings is not None else Path(os.environ.get("KEEL_HOME", "~/.keel"))
    return default_state_path(home, suite.name, digest)


def _save(
    result: EvalResult,
    experiment: str | None,
    url: str | None,
    key: str | None,
    settings: Settings | None,
) -> str:
    suite = result.suite
    params: dict[str, Any] = {
        "suite": suite.name,
        "suite_digest": result.digest,
        "dataset": result.dataset_id,
        "models": ",".join(model.id for model in suite.models),
        "prompts": ",".join(sorted({row.prompt for row in result.leaderboard.rows})),
        "scorers": ",".join(result.leaderboard.scorer_names),
        "request_params": suite.params,
    }
    tags = {
        "keel.kind": "eval",
        "keel.eval.status": "complete" if result.complete else "partial",
    }
    if result.stopped:
        tags["keel.eval.stopped"] = result.stopped
    if result.environment:
        tags["keel.environment"] = str(result.environment)
    metrics = leaderboard_metrics(result.leaderboard)
    metrics["cases_finished"] = float(len(result.records))
    metrics["cases_failed"] = float(len(result.failures))
    metrics["cases_skipped"] = float(result.skipped)
    metrics["new_calls"] = float(result.new_calls)
    metrics["spent_usd"] = result.spent_usd
    # Stored prompts are versioned `name@3`; inline ones are only digests, kept in the params.
    stored_prompts = {
        row.prompt_version for row in result.leaderboard.rows if "@" in row.prompt_version
    }
    artifacts = {
        "leaderboard.json": result.leaderboard.to_json(),
        "cases.json": [record.to_json() for record in result.records],
        "failures.json": [vars(failure) for failure in result.failures],
    }
    return save_run(
        experiment=experiment or suite.experiment or DEFAULT_EXPERIMENT,
        name=suite.name,
        params=params,
        tags=tags,
        metrics=metrics,
        artifacts=artifacts,
        links=[("dataset", result.dataset_id)]
        + [("prompt", version) for version in sorted(stored_prompts)],
        url=url,
        api_key=key,
        settings=settings,
    )
