"""Datasets, prompt templates and scorers over HTTP: /v1/keel/datasets, /v1/keel/prompts and
/v1/keel/scorers. The stores are synchronous and run in worker threads; every write is
audited. Errors are `KeelError`s, rendered as OpenAI-style bodies by the app's handlers."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import orjson
from fastapi import APIRouter, Path, Query, Request
from pydantic import Field
from starlette.responses import Response

from keel.errors import InvalidRequestError
from keel.server.access import audited, current_actor
from keel.server.body import StoredBody
from keel.server.jsonable import to_jsonable
from keel.server.openapi import error_responses
from keel.tracking.datasets import MAX_ROWS, DatasetStore, DatasetVersion
from keel.tracking.prompts import PromptStore, PromptVersion
from keel.tracking.references import MAX_ALIAS, MAX_NAME, MAX_VERSION

__all__ = ["datasets_router", "prompts_router", "scorers_router"]

_GUARDED = error_responses(401, 403, 500)
_WRITES = error_responses(400, 404, 409, 413, 415)
_FINDS = error_responses(400, 404)
# Adding content a name already holds answers 200 with that version (`created: false`).
_ADDS = {**_WRITES, 200: {"description": "The content was already stored: its version."}}
datasets_router = APIRouter(prefix="/v1/keel/datasets", tags=["datasets"], responses=_GUARDED)
prompts_router = APIRouter(prefix="/v1/keel/prompts", tags=["prompts"], responses=_GUARDED)
scorers_router = APIRouter(prefix="/v1/keel/scorers", tags=["scorers"], responses=_GUARDED)

_NO_NUL = r"^[^\x00]*$"
_NAME = Path(..., min_length=1, max_length=MAX_NAME, pattern=_NO_NUL)
_REF = Path(..., min_length=1, max_length=MAX_ALIAS, pattern=_NO_NUL)
_ALIAS = Path(..., min_length=1, max_length=MAX_ALIAS, pattern=_NO_NUL)
_PAGE_LIMIT = 10_000


# -- bodies --------------------------------------------------------------------------------


class ProductionFilter(StoredBody):
    model: str | None = Field(default=None, min_length=1, max_length=255)
    since: datetime | None = Field(default=None, strict=False)
    until: datetime | None = Field(default=None, strict=False)
    label: str | None = Field(default=None, min_length=1, max_length=255)
    thumbs: str | None = Field(default=None, pattern="^(up|down)$")
    feedback_name: str | None = Field(default=None, min_length=1, max_length=255)
    limit: int = Field(default=1000, ge=1, le=MAX_ROWS)


class DatasetBody(StoredBody):
    name: str = Field(min_length=1, max_length=MAX_NAME)
    # Exactly one source: rows (one split), rows by split, or production traffic.
    rows: list[dict[str, Any]] | None = None
    rows_by_split: dict[str, list[dict[str, Any]]] | None = None
    production: ProductionFilter | None = None
    # Divide `rows` (or the production rows) by fractions: {"train": 0.8, "test": 0.2}.
    splits: dict[str, float] | None = Field(default=None, strict=False)
    # The one split `rows` (or the production rows) go into; "default" when not named.
    split: str | None = Field(default=None, min_length=1, max_length=255)
    description: str | None = Field(default=None, max_length=10_000)
    # Where the rows came from (a file name and format, say), kept with the version.
    source: dict[str, Any] | None = None


class PromptBody(StoredBody):
    name: str = Field(min_length=1, max_length=MAX_NAME)
    template: str | list[dict[str, str]]
    description: str | None = Field(default=None, max_length=10_000)
    variables: list[str] | None = None


class RenderBody(StoredBody):
    # A version number, an alias or "latest"; the production alias (else the latest) if absent.
    ref: str | None = Field(default=None, min_length=1, max_length=MAX_ALIAS)
    variables: dict[str, Any] = Field(default_factory=dict)


class AliasBody(StoredBody):
    version: int = Field(ge=1, le=MAX_VERSION)


class CaseBody(StoredBody):
    output: str
    expected: Any = None
    inputs: dict[str, Any] = Field(default_factory=dict)
    latency_s: float | None = Field(default=None, ge=0, allow_inf_nan=False, strict=False)
    cost_usd: float | None = Field(default=None, ge=0, allow_inf_nan=False, strict=False)


class ScoreBody(StoredBody):
    scorer: str | dict[str, Any]
    cases: list[CaseBody] = Field(min_length=1, max_length=10_000)


# -- plumbing ------------------------------------------------------------------------------


def _datasets(request: Request) -> DatasetStore:
    store: DatasetStore | None = getattr(request.app.state.keel, "datasets", None)
    if store is None:
        raise InvalidRequestError("datasets are not available on this server")
    return store


def _prompts(request: Request) -> PromptStore:
    store: PromptStore | None = getattr(request.app.state.keel, "prompts", None)
    if store is None:
        raise InvalidRequestError("prompts are not available on this server")
    return store


def _json(value: Any, status_code: int = 200) -> Response:
    return Response(
        content=orjson.dumps(to_jsonable(value)),
        status_code=status_code,
        media_type="application/json",
    )


def _listing(items: Any) -> Response:
    return _json({"object": "list", "data": list(items)})


def dataset_view(version: DatasetVersion) -> dict[str, Any]:
    return {
        "object": "dataset.version",
        "name": version.name,
        "version": version.version,
        "ref": version.ref,
        "digest": version.digest,
        "splits": version.splits,
        "row_count": version.row_count,
        "columns": version.columns,
        "source": version.source,
        "description": version.description,
        "created_by": version.created_by,
        "created_at": version.created_at,
        "created": version.created,
    }


def prompt_view(version: PromptVersion) -> dict[str, Any]:
    return {
        "object": "prompt.version",
        "name": version.name,
        "version": version.version,
        "ref": version.ref,
        "digest": version.digest,
        "template": version.template,
        "kind": "chat" if version.is_chat else "text",
        "variables": sorted(version.variables),
        "aliases": version.aliases,
        "description": version.description,
        "created_by": version.created_by,
        "created_at": version.created_at,
        "created": version.created,
    }


def _dataset_number(ref: str) -> str:
    if ref == "latest" or (ref.isascii() and ref.isdigit()):
        return ref
    raise InvalidRequestError(
        f"ref: a dataset version is a number or 'latest', got {ref!r}", param="ref"
    )


# -- datasets ------------------------------------------------------------------------------


@datasets_router.post("", status_code=201, responses=_ADDS)
async def add_dataset(request: Request, body: DatasetBody) -> Response:
    """A new dataset version from rows, rows by split, or production traffic. Content that a
    version of the dataset already holds answers that version with 200."""
    store = _datasets(request)
    actor = current_actor(request).name
    given = [k for k in ("rows", "rows_by_split", "production") if getattr(body, k) is not None]
    if len(given) != 1:
        raise InvalidRequestError(
            "give exactly one of rows, rows_by_split or production", param="rows"
        )
    if body.split is not None and (body.splits is not None or body.rows_by_split is not None):
        raise InvalidRequestError(
            "split names the one split of rows; it goes with neither splits nor rows_by_split",
            param="split",
        )
    if body.production is not None:
        f = body.production
        version = await asyncio.to_thread(
            store.add_from_production,
            body.name,
            model=f.model,
            since=f.since,
            until=f.until,
            label=f.label,
            thumbs=f.thumbs,
            feedback_name=f.feedback_name,
            limit=f.limit,
            split=body.split,
            splits=body.splits,
            description=body.description,
            actor=actor,
        )
    else:
        rows: Any = body.rows_by_split
        if body.rows is not None:
            rows = {body.split: body.rows} if body.split is not None else body.rows
        version = await asyncio.to_thread(
            store.add_rows,
            body.name,
            rows,
            splits=body.splits,
            description=body.description,
            source=body.source,
            actor=actor,
        )
    view = dataset_view(version)
    if version.created:
        audited(request, "datasets.add", version.ref, after=view)
    return _json(view, 201 if version.created else 200)


@datasets_router.get("")
async def list_datasets(request: Request) -> Response:
    return _listing(await asyncio.to_thread(_datasets(request).list))


@datasets_router.get("/{name}", responses=_FINDS)
async def get_dataset(request: Request, name: str = _NAME) -> Response:
    """A dataset and all its versions."""
    versions = await asyncio.to_thread(_datasets(request).versions, name)
    return _json(
        {
            "object": "dataset",
            "name": name,
            "latest_version": versions[-1].version,
            "versions": [dataset_view(version) for version in versions],
        }
    )


@datasets_router.get("/{name}/versions/{ref}", responses=_FINDS)
async def get_dataset_version(request: Request, name: str = _NAME, ref: str = _REF) -> Response:
    """One version, by number or `latest`."""
    found = await asyncio.to_thread(_datasets(request).get, f"{name}@{_dataset_number(ref)}")
    return _json(dataset_view(found))


@datasets_router.get("/{name}/versions/{ref}/rows", responses=_FINDS)
async def get_dataset_rows(
    request: Request,
    name: str = _NAME,
    ref: str = _REF,
    split: str | None = Query(None, min_length=1, max_length=255, pattern=_NO_NUL),
    offset: int = Query(0, ge=0, le=MAX_ROWS),
    limit: int = Query(_PAGE_LIMIT, ge=1, le=_PAGE_LIMIT),
) -> Response:
    """A page of a version's rows: one split's, or every split's in order."""
    store = _datasets(request)

    def page() -> dict[str, Any]:
        version = store.get(f"{name}@{_dataset_number(ref)}")
        rows = store.read_rows(name, version.version, split, offset=offset, limit=limit)
        total = version.splits[split] if split is not None and split in version.splits else None
        total = version.row_count if split is None else total
        return {
            "object": "list",
            "ref": version.ref,
            "split": split,
            "offset": offset,
            "total": total,
            "has_more": total is not None and offset + len(rows) < total,
            "data": rows,
        }

    return _json(await asyncio.to_thread(page))


# -- prompts -------------------------------------------------------------------------------


@prompts_router.post("", status_code=201, responses=_ADDS)
async def add_prompt(request: Request, body: PromptBody) -> Response:
    """A new prompt version; the same content as an existing version answers it with 200."""
    version = await asyncio.to_thread(
        _prompts(request).add,
        body.name,
        body.template,
        description=body.description,
        variables=body.variables,
        actor=current_actor(request).name,
    )
    view = prompt_view(version)
    if version.created:
        audited(request, "prompts.add", version.ref, after=view)
    return _json(view, 201 if version.created else 200)


@prompts_router.get("")
async def list_prompts(request: Request) -> Response:
    return _listing(await asyncio.to_thread(_prompts(request).list))


@prompts_router.get("/{name}", responses=_FINDS)
async def get_prompt(request: Request, name: str = _NAME) -> Response:
    """A prompt, its versions and its aliases."""
    versions = await asyncio.to_thread(_prompts(request).versions, name)
    aliases = {alias: v.version for v in versions for alias in v.aliases}
    return _json(
        {
            "object": "prompt",
            "name": name,
            "latest_version": versions[-1].version,
            "aliases": dict(sorted(aliases.items())),
            "versions": [prompt_view(version) for version in versions],
        }
    )


@prompts_router.get("/{name}/versions/{ref}", responses=_FINDS)
async def get_prompt_version(request: Request, name: str = _NAME, ref: str = _REF) -> Response:
    """One version: by number, by alias, or `latest`."""
    return _json(prompt_view(await asyncio.to_thread(_prompts(request).get, f"{name}@{ref}")))


@prompts_router.post("/{name}/render", responses=error_responses(400, 404, 413, 415))
async def render_prompt(request: Request, body: RenderBody, name: str = _NAME) -> Response:
    """The chat messages a version renders to with `variables` (nothing is stored)."""
    store = _prompts(request)
    target = f"{name}@{body.ref}" if body.ref is not None else name
    version = await asyncio.to_thread(store.get, target)
    messages = version.render(body.variables)
    return _json({"object": "prompt.rendered", "ref": version.ref, "messages": messages})


@prompts_router.put("/{name}/aliases/{alias}", responses=_WRITES)
async def set_prompt_alias(
    request: Request, body: AliasBody, name: str = _NAME, alias: str = _ALIAS
) -> Response:
    """Point `name@alias` at a version; the move is kept in the alias history."""
    move = await asyncio.to_thread(
        _prompts(request).set_alias, name, alias, body.version, actor=current_actor(request).name
    )
    audited(
        request,
        "prompts.set_alias",
        f"{name}@{alias}",
        before={"version": move.from_version},
        after={"version": move.to_version},
    )
    return _json(move)


@prompts_router.get("/{name}/aliases/history", responses=_FINDS)
async def prompt_alias_history(
    request: Request,
    name: str = _NAME,
    alias: str | None = Query(None, min_length=1, max_length=MAX_ALIAS, pattern=_NO_NUL),
) -> Response:
    """Every alias move of a prompt (or of one alias), oldest first."""
    return _listing(await asyncio.to_thread(_prompts(request).alias_history, name, alias))


# -- scorers -------------------------------------------------------------------------------


@scorers_router.get("")
async def list_scorers(request: Request) -> Response:
    """The built-in scorer types, and the custom ones installed as `keel.scorers` entry
    points on this server."""
    from keel.evals.scoring.serving import scorer_catalog

    return _listing(scorer_catalog())


@scorers_router.post("/score", responses=_WRITES)
async def score(request: Request, body: ScoreBody) -> Response:
    """Score cases with one scorer: per-case scores and the aggregate. Model-backed scorers
    call their models through this gateway as the caller (keys, quotas and policies apply)."""
    from keel.evals.scoring.serving import score_on_server

    cases = [case.model_dump() for case in body.cases]
    return _json(await score_on_server(request, body.scorer, cases))
