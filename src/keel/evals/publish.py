"""Where results go after a run: a tracked run (params, metrics, the leaderboard and every
case as artifacts) and, on request, the registry as a model version's measured evaluation,
linked in lineage dataset → run → evaluation → model version."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from keel.errors import InvalidRequestError
from keel.evals.client import CallFailed, EvalClient
from keel.evals.leaderboard import Leaderboard, LeaderboardRow

if TYPE_CHECKING:
    from keel.config import Settings

__all__ = ["parse_model_version", "register_result", "save_run"]


def parse_model_version(text: str) -> tuple[str, int]:
    name, _, version = text.partition("@")
    if not name or not (version.isascii() and version.isdigit()):
        raise InvalidRequestError(
            f"--register {text!r}: write it as MODEL@VERSION, e.g. support-bot@3",
            param="register",
        )
    return name, int(version)


def save_run(
    *,
    experiment: str,
    name: str,
    params: dict[str, Any],
    tags: dict[str, str],
    metrics: dict[str, float],
    artifacts: dict[str, Any],
    links: list[tuple[str, str]],
    url: str | None,
    api_key: str | None,
    settings: Settings | None = None,
) -> str:
    """The result as a finished run: on the server at `url`, else in the store that
    `settings` (default: KEEL_CONFIG and KEEL_* variables) names, as an embedded gateway would."""
    from keel.tracking import start_run

    client: Any
    if url:
        from keel.sdk import Keel

        client = Keel(url, api_key=api_key)
    else:
        from keel.config_loading import load_settings
        from keel.tracking.embedded import EmbeddedTracking

        client = EmbeddedTracking.from_settings(settings or load_settings())
    try:
        run = start_run(experiment, name=name, params=params, tags=tags, client=client)
        try:
            run.log_metrics(metrics)
            for artifact_name, value in artifacts.items():
                run.log_dict(value, artifact_name)
            for kind, entity_id in links:
                run.link(kind, entity_id)
        except BaseException:
            run.finish(status="failed")
            raise
        run.finish(status="finished")
        return str(run.id)
    finally:
        client.close()


def leaderboard_metrics(board: Leaderboard) -> dict[str, float]:
    """`scorer/model/prompt` for each row and scorer, plus latency and cost figures."""
    metrics: dict[str, float] = {}
    for row in board.rows:
        where = f"{row.model}/{row.prompt}"
        for scorer, figure in row.scores.items():
            metrics[f"{scorer}/{where}"] = figure.value
        if row.latency_p50_ms is not None:
            metrics[f"latency_p50_ms/{where}"] = row.latency_p50_ms
        if row.cost_per_1k_requests_usd is not None:
            metrics[f"cost_per_1k_requests_usd/{where}"] = row.cost_per_1k_requests_usd
    return metrics


def pick_row(board: Leaderboard, model: str) -> LeaderboardRow:
    """The row to register for `model`: the only row, or the only one whose model is it."""
    if len(board.rows) == 1:
        return board.rows[0]
    matching = [row for row in board.rows if row.model == model]
    if len(matching) == 1:
        return matching[0]
    if not matching:
        raise InvalidRequestError(
            f"--register {model}: the leaderboard has no row for model {model!r}; narrow the "
            "run with --model",
            param="register",
        )
    raise InvalidRequestError(
        f"--register {model}: {len(matching)} prompts were run for {model!r}; choose one with "
        "--prompt",
        param="register",
    )


async def register_result(
    client: EvalClient,
    board: Leaderboard,
    target: str,
    *,
    run_id: str | None,
    dataset_id: str,
) -> list[dict[str, Any]]:
    """One registry evaluation per scorer (its headline figure) on `target` (MODEL@VERSION)."""
    name, version = parse_model_version(target)
    row = pick_row(board, name)
    path = f"/v1/keel/registry/models/{name}/versions/{version}/evaluations"
    written = []
    try:
        if run_id:
            await client.post(
                "/v1/keel/lineage/links",
                {
                    "upstream": {"kind": "dataset", "id": dataset_id},
                    "downstream": {"kind": "run", "id": run_id},
                    "relation": "input",
                },
            )
        for scorer, figure in row.scores.items():
            body: dict[str, Any] = {"metric": scorer, "value": figure.value, "dataset": dataset_id}
            if run_id:
                body["run_id"] = run_id
            written.append(await client.post(path, body))
    except CallFailed as exc:
        raise InvalidRequestError(f"--register {target}: {exc}", param="register") from None
    return written
