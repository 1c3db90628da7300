"""Experiment tracking over HTTP: experiments and runs under /v1/keel/experiments and
/v1/keel/runs.

Logged metrics, params and tags are validated here and queued for the tracking writer (the
request never waits on the database); every read first lets the writer catch up. Runs record
the caller's key, team and environment: a run made with a production key is allowed, and
its `environment` says so.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from typing import Annotated, Any, Literal, NotRequired

import orjson
from fastapi import APIRouter, Path, Query, Request
from pydantic import ConfigDict, Field, ValidationError
from starlette.responses import Response
from typing_extensions import TypedDict

from keel.errors import InvalidRequestError
from keel.identity import Actor
from keel.server.access import audited, current_actor
from keel.server.body import StoredBody, read_body
from keel.server.openapi import error_responses, json_body
from keel.tracking.service import TrackingService
from keel.tracking.store import LogBatch, Provenance, RunOwner

__all__ = ["experiments_router", "runs_router"]

_GUARDED = error_responses(401, 403, 500)
experiments_router = APIRouter(
    prefix="/v1/keel/experiments", tags=["experiments"], responses=_GUARDED
)
runs_router = APIRouter(prefix="/v1/keel/runs", tags=["experiments"], responses=_GUARDED)

_WRITES = error_responses(400, 404, 409, 413, 415)
_FINDS = error_responses(400, 404)
_NO_NUL = r"^[^\x00]*$"
_RUN_ID = Path(..., min_length=1, max_length=40, pattern=_NO_NUL)
_KEY = 255
# Bounds of the metrics table's BigInteger columns.
_BIG = 2**63 - 1
MAX_POINTS = 50_000


class ExperimentBody(StoredBody):
    name: str = Field(min_length=1, max_length=255)
    description: str | None = Field(default=None, max_length=2000)


class RunBody(StoredBody):
    experiment: str = Field(min_length=1, max_length=255)
    name: str | None = Field(default=None, max_length=255)
    params: dict[str, Any] = Field(default_factory=dict, max_length=1000)
    tags: dict[str, str] = Field(default_factory=dict, max_length=1000)
    git_commit: str | None = Field(default=None, max_length=64)
    git_dirty: bool | None = None
    python_version: str | None = Field(default=None, max_length=64)
    packages_digest: str | None = Field(default=None, max_length=80)
    host: str | None = Field(default=None, max_length=255)


class MetricBody(TypedDict):
    # A TypedDict, not a StoredBody: a batch holds up to 50,000 points, and model instances
    # (and a per-field check) cost several times more per point; the route checks each
    # distinct key's text once instead.
    __pydantic_config__ = ConfigDict(extra="forbid", strict=True)  # type: ignore[misc]

    key: Annotated[str, Field(min_length=1, max_length=_KEY)]
    value: Annotated[float, Field(allow_inf_nan=False)]
    step: NotRequired[Annotated[int, Field(ge=-_BIG, le=_BIG)]]
    timestamp_ms: NotRequired[Annotated[int, Field(ge=0, le=_BIG)] | None]


class LogBody(StoredBody):
    metrics: list[MetricBody] = Field(default_factory=list, max_length=MAX_POINTS)
    params: dict[str, Any] = Field(default_factory=dict, max_length=1000)
    tags: dict[str, str] = Field(default_factory=dict, max_length=1000)


class FinishBody(StoredBody):
    status: Literal["finished", "failed"] = "finished"
    error: str | None = Field(default=None, max_length=2000)


class ArtifactBody(StoredBody):
    name: str = Field(min_length=1, max_length=500)
    content_base64: str
    media_type: str | None = Field(default=None, max_length=255)


class InputBody(StoredBody):
    kind: str = Field(min_length=1, max_length=64)
    ref: str = Field(min_length=1, max_length=255)
    name: str | None = Field(default=None, max_length=255)
    version: int | None = Field(default=None, ge=1, le=2**31 - 1)
    relation: str | None = Field(default=None, min_length=1, max_length=64)
    output: bool = False


class ModelConfigBody(StoredBody):
    name: str = Field(min_length=1, max_length=255)
    config: dict[str, Any]


# -- plumbing ------------------------------------------------------------------------------


def _tracking(request: Request) -> TrackingService:
    found: TrackingService = request.app.state.keel.tracking
    return found


def _json(value: Any, status_code: int = 200) -> Response:
    return Response(
        content=orjson.dumps(value), status_code=status_code, media_type="application/json"
    )


def _listing(items: list[Any]) -> Response:
    return _json({"object": "list", "data": items})


def _owner(actor: Actor) -> RunOwner:
    # Open mode (no keys): the one local user, as in the embedded store.
    environment = "local" if actor.kind == "local" else actor.environment
    return RunOwner(actor.name, key_id=actor.key_id, environment=environment, team=actor.team)


def _field_error(exc: ValidationError) -> InvalidRequestError:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid batch"}
    if first.get("type") == "json_invalid":
        return InvalidRequestError("the body is not valid JSON", code="invalid_json")
    param = ".".join(str(part) for part in first["loc"]) or None
    return InvalidRequestError(f"{param or 'body'}: {first['msg']}", param=param)


def _storable(text: str, field: str) -> None:
    """Text a database column can hold: no NUL, no lone surrogate."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequestError(f"{field}: holds an invalid character", param=field) from None
    if "\x00" in text:
        raise InvalidRequestError(f"{field}: cannot contain NUL characters", param=field)


def _keys(values: dict[str, Any], field: str) -> None:
    for key in values:
        if not key or len(key) > _KEY:
            raise InvalidRequestError(
                f"{field}: keys are 1 to {_KEY} characters, not {key[:40]!r}", param=field
            )


# -- experiments -------------------------------------------------------------------------------


@experiments_router.get("")
async def list_experiments(request: Request) -> Response:
    """Every experiment, with how many runs it has and when the last one started."""
    return _listing(await asyncio.to_thread(_tracking(request).store.list_experiments))


@experiments_router.post("", status_code=201, responses=_WRITES)
async def create_experiment(request: Request, body: ExperimentBody) -> Response:
    """Create an experiment (an existing one with that name is returned as it is)."""
    actor = current_actor(request)
    found = await asyncio.to_thread(
        _tracking(request).store.ensure_experiment, body.name, actor.name, body.description
    )
    audited(request, "experiments.create", body.name, after=found)
    return _json(found, 201)


# -- runs ------------------------------------------------------------------------------------


@runs_router.post("", status_code=201, responses=_WRITES)
async def create_run(request: Request, body: RunBody) -> Response:
    """Start a run of `experiment` (created on first use), as the caller's key."""
    _keys(body.params, "params")
    _keys(body.tags, "tags")
    tracking = _tracking(request)
    provenance = Provenance(
        git_commit=body.git_commit,
        git_dirty=body.git_dirty,
        python_version=body.python_version,
        packages_digest=body.packages_digest,
        host=body.host,
    )
    run = await asyncio.to_thread(
        tracking.store.create_run,
        body.experiment,
        _owner(current_actor(request)),
        name=body.name,
        params=body.params,
        tags=body.tags,
        provenance=provenance,
    )
    tracking.remember(run)
    audited(request, "runs.create", run["id"], detail={"experiment": body.experiment})
    return _json(run, 201)


@runs_router.get("", responses=_FINDS)
async def list_runs(
    request: Request,
    experiment: str | None = Query(None, min_length=1, max_length=255, pattern=_NO_NUL),
    status: Literal["running", "finished", "failed"] | None = Query(None),
    limit: int = Query(100, ge=1, le=1000),
) -> Response:
    """Runs, newest first, each with its params, tags and metric summaries."""
    tracking = _tracking(request)
    await tracking.settled()
    runs = await asyncio.to_thread(
        tracking.store.list_runs, experiment=experiment, status=status, limit=limit
    )
    return _listing(runs)


@runs_router.get("/compare", responses=_FINDS)
async def compare_runs(
    request: Request,
    ids: list[str] = Query(..., min_length=2, max_length=50),
) -> Response:
    """Runs side by side: each param and metric (last value) per run, and which differ."""
    for run_id in ids:
        if not run_id or len(run_id) > 40 or "\x00" in run_id:
            raise InvalidRequestError(f"ids: {run_id[:40]!r} is not a run id", param="ids")
    tracking = _tracking(request)
    await tracking.settled()
    return _json(await asyncio.to_thread(tracking.store.compare, ids))


@runs_router.get("/{run_id}", responses=_FINDS)
async def get_run(request: Request, run_id: str = _RUN_ID) -> Response:
    tracking = _tracking(request)
    await tracking.settled()
    run = await asyncio.to_thread(tracking.store.get_run, run_id)
    tracking.remember(run)
    return _json(run)


@runs_router.post("/{run_id}/log", responses=_WRITES, openapi_extra=json_body(LogBody))
async def log_batch(request: Request, run_id: str = _RUN_ID) -> Response:
    """Metric points, params and tags in one batch (an empty batch is a heartbeat). Queued:
    the answer comes before the write, and every later read sees it."""
    tracking = _tracking(request)
    limit = request.app.state.keel.settings.server.max_request_body_bytes
    raw = await read_body(request, limit)
    try:
        # Parsed and validated in one pass by pydantic's own JSON reader: a batch holds up to
        # 50,000 points.
        body = LogBody.model_validate_json(raw)
    except ValidationError as exc:
        raise _field_error(exc) from None
    _keys(body.params, "params")
    _keys(body.tags, "tags")
    for key in {point["key"] for point in body.metrics}:
        _storable(key, "metrics.key")
    now_ms = time.time_ns() // 1_000_000
    batch = LogBatch(
        run_id,
        [
            (
                point["key"],
                point["value"],
                point.get("step", 0),
                point.get("timestamp_ms") or now_ms,
            )
            for point in body.metrics
        ],
        body.params,
        body.tags,
    )
    await tracking.accept(batch)
    return _json({"object": "run.log", "run_id": run_id, "accepted": len(batch.metrics)})


@runs_router.post("/{run_id}/finish", responses=_WRITES)
async def finish_run(request: Request, body: FinishBody, run_id: str = _RUN_ID) -> Response:
    """End a run as finished or failed (after everything it logged is written)."""
    tracking = _tracking(request)
    await tracking.settled()
    run = await asyncio.to_thread(tracking.store.finish_run, run_id, body.status, body.error)
    tracking.remember(run)
    audited(request, "runs.finish", run_id, detail={"status": run["status"]})
    return _json(run)


@runs_router.get("/{run_id}/metrics", responses=_FINDS)
async def metric_history(
    request: Request,
    run_id: str = _RUN_ID,
    key: str = Query(..., min_length=1, max_length=_KEY, pattern=_NO_NUL),
) -> Response:
    """Every point of one metric, by step."""
    tracking = _tracking(request)
    await tracking.settled()
    points = await asyncio.to_thread(tracking.store.metric_history, run_id, key)
    return _listing(points)


@runs_router.post("/{run_id}/artifacts", status_code=201, responses=_WRITES)
async def upload_artifact(request: Request, body: ArtifactBody, run_id: str = _RUN_ID) -> Response:
    """A file for the run, base64 in JSON (up to `server.max_request_body_bytes`)."""
    try:
        data = base64.b64decode(body.content_base64, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequestError(
            "content_base64: not valid base64", param="content_base64"
        ) from None
    stored = await asyncio.to_thread(
        _tracking(request).store.add_artifact, run_id, body.name, data, body.media_type
    )
    audited(request, "runs.artifact", f"{run_id}/{body.name}", detail={"size": len(data)})
    return _json(stored, 201)


@runs_router.get(
    "/{run_id}/artifacts/{name:path}",
    responses={
        200: {"description": "The artifact's bytes.", "content": {"application/octet-stream": {}}},
        **_FINDS,
    },
)
async def download_artifact(
    request: Request,
    run_id: str = _RUN_ID,
    name: str = Path(..., min_length=1, max_length=500, pattern=_NO_NUL),
) -> Response:
    data, media_type = await asyncio.to_thread(_tracking(request).store.artifact, run_id, name)
    return Response(content=data, media_type=media_type or "application/octet-stream")


@runs_router.post("/{run_id}/inputs", status_code=201, responses=_WRITES)
async def add_input(request: Request, body: InputBody, run_id: str = _RUN_ID) -> Response:
    """Link what the run used (a prompt or dataset version, any lineage entity) or, with
    `output: true`, what it produced; the link also enters the lineage graph."""
    found = await asyncio.to_thread(
        _tracking(request).store.add_input,
        run_id,
        body.kind,
        body.ref,
        created_by=current_actor(request).name,
        name=body.name,
        version=body.version,
        relation=body.relation,
        output=body.output,
    )
    return _json(found, 201)


@runs_router.post("/{run_id}/model-configs", status_code=201, responses=_WRITES)
async def log_model_config(
    request: Request, body: ModelConfigBody, run_id: str = _RUN_ID
) -> Response:
    """Store a model configuration content-addressed (digest, and a version number per name)
    and link it to the run."""
    found = await asyncio.to_thread(
        _tracking(request).store.log_model_config,
        run_id,
        body.config,
        name=body.name,
        created_by=current_actor(request).name,
    )
    return _json(found, 201)
