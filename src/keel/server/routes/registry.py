"""The model registry over HTTP: cards, versions, aliases, promotions, gates, evaluations and
lineage, under /v1/keel/registry and /v1/keel/lineage.

Every route calls the synchronous `Registry` in a worker thread and answers JSON (a model card
export in YAML is the one exception). Registry errors are `KeelError`s, rendered by the app's
error handlers as OpenAI-style bodies.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal, ParamSpec, TypeVar

import orjson
from fastapi import APIRouter, Body, Path, Query, Request
from pydantic import (
    Field,
    ValidationError,
    model_validator,
)
from starlette.responses import Response

from keel.errors import ConflictError, InvalidRequestError
from keel.registry.cards import (
    MAX_NAME_LENGTH,
    CardDataError,
    ModelCard,
    card_digest,
    dump_card,
    load_card,
    to_huggingface,
)
from keel.registry.models import EntityRef, GateOp, QualityGate, Stage
from keel.registry.service import Registry
from keel.server.access import audited, current_actor
from keel.server.body import StoredBody, read_body
from keel.server.jsonable import to_jsonable
from keel.server.openapi import Responses, error_responses, json_body

__all__ = ["lineage_router", "router"]

_GUARDED = error_responses(401, 403, 500)
router = APIRouter(prefix="/v1/keel/registry", tags=["registry"], responses=_GUARDED)
lineage_router = APIRouter(prefix="/v1/keel/lineage", tags=["registry"], responses=_GUARDED)

T = TypeVar("T")
P = ParamSpec("P")

_CARD_LIMIT_BYTES = 1024 * 1024
_YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
# Bounds match the registry's columns (keel/registry/tables.py): versions are 32-bit
# integers, ids and names at most 255 characters, kinds and relations 64. NUL characters are
# refused everywhere: PostgreSQL text cannot hold them.
MAX_VERSION = 2**31 - 1
MAX_EXPIRY_S = 365 * 24 * 3600
_NO_NUL = r"^[^\x00]*$"
_NAME = Path(..., min_length=1, max_length=MAX_NAME_LENGTH, pattern=_NO_NUL)
_ALIAS = Path(..., min_length=1, max_length=64, pattern=_NO_NUL)
_REF = Path(..., min_length=1, max_length=64, pattern=_NO_NUL)
_PROMOTION_ID = Path(..., min_length=1, max_length=64, pattern=_NO_NUL)
_CARD_BODY_DOC = json_body(
    ModelCard, **{"application/yaml": {"type": "string", "title": "ModelCard (YAML)"}}
)
# What a route can answer besides 401, 403 and 500 (the routers'): 400 with any parameter or
# body, 413 and 415 with any body, 404 where it names something, 409 where a write can collide.
_WRITES = error_responses(400, 404, 409, 413, 415)
_FINDS = error_responses(400, 404)
_EXPORTS: Responses = {
    200: {
        "description": "The card in the format asked for.",
        "content": {
            "application/yaml": {"schema": {"type": "object"}},
            "application/json": {"schema": {"type": "object"}},
        },
    },
    **_FINDS,
}


# -- request bodies ------------------------------------------------------------------------


_Body = StoredBody


class AliasMove(_Body):
    version: int = Field(ge=1, le=MAX_VERSION)
    reason: str = Field(min_length=1, max_length=2000)
    expected_version: int | None = Field(default=None, ge=1, le=MAX_VERSION)
    # Re-pointing `staging`/`production` (a rollback) cites the approved promotion of that
    # version to that stage.
    approval_id: str | None = Field(default=None, min_length=1, max_length=64)


class PromotionBody(_Body):
    version: int = Field(ge=1, le=MAX_VERSION)
    stage: Stage
    comment: str | None = Field(default=None, max_length=2000)
    expires_in_s: int | None = Field(default=None, gt=0, le=MAX_EXPIRY_S)


class ApproveBody(_Body):
    comment: str | None = Field(default=None, max_length=2000)
    override_gates: bool = False


class RejectBody(_Body):
    comment: str | None = Field(default=None, max_length=2000)


class GateBody(_Body):
    metric: str = Field(min_length=1, max_length=200)
    op: GateOp
    threshold: float = Field(allow_inf_nan=False)
    dataset: str | None = Field(default=None, max_length=200)


class EvaluationBody(_Body):
    metric: str = Field(min_length=1, max_length=200)
    value: float = Field(allow_inf_nan=False)
    dataset: str | None = Field(default=None, max_length=200)
    run_id: str | None = Field(default=None, max_length=200)


class ArchiveBody(_Body):
    version: int | None = Field(default=None, ge=1, le=MAX_VERSION)


class EntityBody(_Body):
    kind: str = Field(min_length=1, max_length=64)
    id: str = Field(min_length=1, max_length=255)

    @model_validator(mode="after")
    def _version_in_range(self) -> EntityBody:
        # A model version's id is `name@3`; its number must fit the version column.
        _, _, ref = self.id.rpartition("@")
        digits = ref.isascii() and ref.isdigit()
        if self.kind == "model_version" and digits and not 1 <= int(ref) <= MAX_VERSION:
            raise ValueError(f"version numbers are 1 to {MAX_VERSION}, got {ref}")
        return self


class LinkBody(_Body):
    upstream: EntityBody
    downstream: EntityBody
    relation: str = Field(min_length=1, max_length=64)


# -- plumbing ------------------------------------------------------------------------------


def _registry(request: Request) -> Registry:
    registry: Registry = request.app.state.keel.registry
    return registry


async def _write(request: Request, method: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """A registry write, then tell the gateway's in-memory view that the registry changed."""
    result = await asyncio.to_thread(method, *args, **kwargs)
    changed = getattr(request.app.state.keel, "registry_changed", None)
    if changed is not None:
        reloading = changed()
        if inspect.isawaitable(reloading):
            await reloading
    action = f"registry.{method.__name__}"
    detail = None
    if kwargs.get("override_gates"):
        # Overriding failed quality gates is the action reviewers most need to find later.
        action, detail = "registry.approve_overriding_gates", {"override_gates": True}
    target = "/".join(str(value) for value in request.path_params.values()) or None
    audited(request, action, target, after=to_jsonable(result), detail=detail)
    return result


def _json(value: Any, status_code: int = 200) -> Response:
    return Response(
        content=orjson.dumps(to_jsonable(value)),
        status_code=status_code,
        media_type="application/json",
    )


def _listing(items: Any) -> Response:
    return _json({"object": "list", "data": list(items)})


def _field_error(exc: ValidationError) -> InvalidRequestError:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid model card"}
    param = ".".join(str(part) for part in first["loc"]) or None
    return InvalidRequestError(f"{param or 'card'}: {first['msg']}", param=param)


async def _card_from(request: Request) -> ModelCard:
    """The model card in the body: a JSON object, or YAML text with a YAML content-type."""
    settings = getattr(request.app.state.keel, "settings", None)
    limit = settings.server.max_request_body_bytes if settings is not None else _CARD_LIMIT_BYTES
    raw = await read_body(request, limit)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequestError("the model card is not UTF-8 text") from None
    is_yaml = content_type in _YAML_TYPES
    try:
        return load_card(text, format="yaml" if is_yaml else "json")
    except ValidationError as exc:
        raise _field_error(exc) from None
    except CardDataError as exc:
        raise InvalidRequestError(str(exc), param=exc.param or None) from None
    except ValueError as exc:  # syntax: the message has the line and column
        hint = "" if is_yaml else "; send YAML with content-type application/yaml"
        raise InvalidRequestError(
            f"the model card could not be read: {exc}{hint}",
            code=None if is_yaml else "invalid_json",
        ) from None


def _version_number(ref: str, param: str) -> int | None:
    """`ref` as a version number, or None where it is an alias. Only ASCII digits count:
    `str.isdigit` also accepts "²", which `int` cannot read."""
    if not (ref.isascii() and ref.isdigit()):
        return None
    number = int(ref)
    if not 1 <= number <= MAX_VERSION:
        raise InvalidRequestError(
            f"{param}: version numbers are 1 to {MAX_VERSION}, got {ref}", param=param
        )
    return number


def _number(registry: Registry, name: str, ref: str, param: str) -> int:
    """A version number from a number or an alias (runs in a worker thread)."""
    number = _version_number(ref, param)
    return number if number is not None else registry.resolve(f"{name}@{ref}").number


def _check_binding(request: Request, card: ModelCard) -> None:
    """A card bound to a model this gateway does not serve would only fail at request time."""
    if card.gateway_model is None or getattr(request.app.state.keel, "router", None) is None:
        return
    if not _served_by_gateway(request, card.gateway_model):
        raise InvalidRequestError(
            f"gateway_model {card.gateway_model!r} is not served by this gateway; "
            "GET /v1/models lists what is",
            param="gateway_model",
        )


def _served_by_gateway(request: Request, name: str) -> bool:
    router_ = getattr(request.app.state.keel, "router", None)
    has = getattr(router_, "has", None)
    return bool(has(name)) if callable(has) else False


# -- models and versions ---------------------------------------------------------------------


@router.post("/models", status_code=201, openapi_extra=_CARD_BODY_DOC, responses=_WRITES)
async def create_model(request: Request) -> Response:
    """Register a new model from its card: version 1."""
    card = await _card_from(request)
    actor = current_actor(request)
    _check_binding(request, card)
    if _served_by_gateway(request, card.name):
        # Gateway model ids win when a request names a model, so this card's limits would
        # silently never apply.
        raise ConflictError(
            f"{card.name!r} is a gateway model id on this server; register the card under "
            "another name (and point it at the deployment with `gateway_model`)"
        )
    record = await _write(request, _registry(request).create, card, actor)
    return _json(record, 201)


@router.get("/models")
async def list_models(request: Request, include_archived: bool = Query(False)) -> Response:
    models = await asyncio.to_thread(
        _registry(request).list_models, include_archived=include_archived
    )
    return _listing(models)


@router.post(
    "/models/{name:path}/versions",
    status_code=201,
    openapi_extra=_CARD_BODY_DOC,
    responses={
        200: {
            "description": "The card is unchanged: its latest version, no new one.",
            "content": {"application/json": {"schema": {}}},
        },
        **_WRITES,
    },
)
async def add_version(request: Request, name: str = _NAME) -> Response:
    """A new version of `name` from a changed card."""
    card = await _card_from(request)
    actor = current_actor(request)
    _check_binding(request, card)
    record = await _write(request, _registry(request).add_version, name, card, actor)
    # An unchanged card makes no new version: nothing was created.
    return _json(record, 201 if getattr(record, "created", True) else 200)


@router.get("/models/{name:path}/versions/{ref}", responses=_FINDS)
async def get_version(request: Request, name: str = _NAME, ref: str = _REF) -> Response:
    """One version, by number (`3`) or by alias (`production`)."""
    registry = _registry(request)
    number = _version_number(ref, "ref")
    if number is not None:
        return _json(await asyncio.to_thread(registry.version, name, number))
    return _json(await asyncio.to_thread(registry.resolve, f"{name}@{ref}"))


@router.get("/models/{name:path}/diff", responses=_FINDS)
async def diff_versions(
    request: Request,
    name: str = _NAME,
    from_: str = Query(..., alias="from", min_length=1, max_length=64, pattern=_NO_NUL),
    to: str = Query(..., min_length=1, max_length=64, pattern=_NO_NUL),
) -> Response:
    """What changed in the card between two versions (numbers or aliases)."""
    registry = _registry(request)

    def run() -> dict[str, Any]:
        numbers = [
            _number(registry, name, ref, param) for ref, param in ((from_, "from"), (to, "to"))
        ]
        diff = registry.diff(name, *numbers)
        return {"model": name, "from": numbers[0], "to": numbers[1], "changes": diff}

    return _json(await asyncio.to_thread(run))


@router.get("/models/{name:path}/export", responses=_EXPORTS)
async def export_card(
    request: Request,
    name: str = _NAME,
    format: Literal["yaml", "json", "huggingface"] = Query("yaml"),
    version: int | None = Query(None, ge=1, le=MAX_VERSION),
) -> Response:
    """The card as YAML or JSON (the author's form), or as a Hugging Face card's metadata."""
    registry = _registry(request)
    if version is None:
        record = await asyncio.to_thread(registry.resolve, name)
    else:
        record = await asyncio.to_thread(registry.version, name, version)
    card: ModelCard = record.card
    headers = {"x-keel-card-digest": card_digest(card)}
    if format == "yaml":
        return Response(dump_card(card, "yaml"), media_type="application/yaml", headers=headers)
    if format == "json":
        return Response(dump_card(card, "json"), media_type="application/json", headers=headers)
    measured = [to_jsonable(evaluation) for evaluation in record.evaluations]
    exported = to_huggingface(card, measured=measured)
    response = _json(exported)
    response.headers.update(headers)
    return response


@router.post("/models/{name:path}/archive", responses=_WRITES)
async def archive(
    request: Request, name: str = _NAME, body: ArchiveBody | None = Body(None)
) -> Response:
    """Archive the model (no longer listed or served), or one of its versions."""
    version = body.version if body is not None else None
    actor = current_actor(request)
    result = await _write(request, _registry(request).archive, name, actor, version=version)
    return _json(result)


# -- aliases ---------------------------------------------------------------------------------


@router.put("/models/{name:path}/aliases/{alias}", responses=_WRITES)
async def move_alias(
    request: Request, body: AliasMove, name: str = _NAME, alias: str = _ALIAS
) -> Response:
    """Point `alias` at a version; `expected_version` makes the move conditional."""
    actor = current_actor(request)
    result = await _write(
        request,
        _registry(request).move_alias,
        name,
        alias,
        body.version,
        actor,
        reason=body.reason,
        expected_version=body.expected_version,
        approval_id=body.approval_id,
    )
    return _json(result)


@router.get("/models/{name:path}/aliases/history", responses=_FINDS)
async def all_alias_history(request: Request, name: str = _NAME) -> Response:
    return _listing(await asyncio.to_thread(_registry(request).alias_history, name))


@router.get("/models/{name:path}/aliases/{alias}/history", responses=_FINDS)
async def alias_history(request: Request, name: str = _NAME, alias: str = _ALIAS) -> Response:
    return _listing(await asyncio.to_thread(_registry(request).alias_history, name, alias))


@router.get("/models/{name:path}/aliases/{alias}/at", responses=_FINDS)
async def alias_at(
    request: Request,
    name: str = _NAME,
    alias: str = _ALIAS,
    time: datetime = Query(..., description="ISO 8601; UTC when no offset is given"),
) -> Response:
    """The version `alias` pointed at, at `time`."""
    try:
        at = time.astimezone(UTC) if time.tzinfo else time.replace(tzinfo=UTC)
    except OverflowError:
        raise InvalidRequestError(
            f"time: {time.isoformat()} is out of range in UTC", param="time"
        ) from None
    version = await asyncio.to_thread(_registry(request).alias_at, name, alias, at)
    return _json({"model": name, "alias": alias, "at": at, "version": version})


# -- promotions and gates ---------------------------------------------------------------------


@router.post("/models/{name:path}/promotions", status_code=201, responses=_WRITES)
async def request_promotion(request: Request, body: PromotionBody, name: str = _NAME) -> Response:
    actor = current_actor(request)
    promotion = await _write(
        request,
        _registry(request).request_promotion,
        name,
        body.version,
        body.stage,
        actor,
        comment=body.comment,
        expires_in_s=body.expires_in_s,
    )
    return _json(promotion, 201)


@router.get("/promotions")
async def list_promotions(
    request: Request,
    model: str | None = Query(None, max_length=MAX_NAME_LENGTH, pattern=_NO_NUL),
    status: str | None = Query(None, max_length=32, pattern=_NO_NUL),
) -> Response:
    found = await asyncio.to_thread(_registry(request).promotions, name=model, status=status)
    return _listing(found)


@router.post("/promotions/{promotion_id}/approve", responses=_WRITES)
async def approve(
    request: Request, promotion_id: str = _PROMOTION_ID, body: ApproveBody | None = Body(None)
) -> Response:
    """Approve (a different actor than the requester, maintainer or above)."""
    body = body or ApproveBody()
    actor = current_actor(request)
    result = await _write(
        request,
        _registry(request).approve,
        promotion_id,
        actor,
        comment=body.comment,
        override_gates=body.override_gates,
    )
    return _json(result)


@router.post("/promotions/{promotion_id}/reject", responses=_WRITES)
async def reject(
    request: Request, promotion_id: str = _PROMOTION_ID, body: RejectBody | None = Body(None)
) -> Response:
    body = body or RejectBody()
    actor = current_actor(request)
    result = await _write(
        request, _registry(request).reject, promotion_id, actor, comment=body.comment
    )
    return _json(result)


@router.put("/models/{name:path}/gates/{stage}", responses=_WRITES)
async def set_gates(
    request: Request, gates: list[GateBody], name: str = _NAME, stage: Stage = Path(...)
) -> Response:
    """Replace the quality gates a version must pass to be promoted to `stage`."""
    actor = current_actor(request)
    quality = [QualityGate(**gate.model_dump()) for gate in gates]
    result = await _write(request, _registry(request).set_gates, name, stage, quality, actor)
    return _json({"model": name, "stage": stage, "gates": result})


@router.post(
    "/models/{name:path}/versions/{version}/evaluations", status_code=201, responses=_WRITES
)
async def record_evaluation(
    request: Request,
    body: EvaluationBody,
    name: str = _NAME,
    version: int = Path(..., ge=1, le=MAX_VERSION),
) -> Response:
    actor = current_actor(request)
    result = await _write(
        request,
        _registry(request).record_evaluation,
        name,
        version,
        metric=body.metric,
        value=body.value,
        dataset=body.dataset,
        run_id=body.run_id,
        actor=actor,
    )
    return _json(result, 201)


# Last of the GET routes: `{name:path}` would match the longer paths above if it came first.
@router.get("/models/{name:path}", responses=_FINDS)
async def get_model(request: Request, name: str = _NAME) -> Response:
    """A model's summary: its versions, their stages, and its aliases."""
    return _json(await asyncio.to_thread(_registry(request).get, name))


# -- lineage -----------------------------------------------------------------------------------


@lineage_router.post("/links", status_code=201, responses=_WRITES)
async def link(request: Request, body: LinkBody) -> Response:
    """Record that `downstream` was derived from `upstream` (a model version, dataset, run...)."""
    actor = current_actor(request)
    result = await _write(
        request,
        _registry(request).link,
        EntityRef(body.upstream.kind, body.upstream.id),
        EntityRef(body.downstream.kind, body.downstream.id),
        relation=body.relation,
        actor=actor,
    )
    return _json(result, 201)


@lineage_router.get("/{kind}/{entity_id:path}", responses=_FINDS)
async def lineage(
    request: Request,
    kind: str = Path(..., min_length=1, max_length=64, pattern=_NO_NUL),
    entity_id: str = Path(..., min_length=1, max_length=255, pattern=_NO_NUL),
    direction: Literal["upstream", "downstream", "both"] = Query("both"),
) -> Response:
    graph = await asyncio.to_thread(
        _registry(request).lineage, EntityRef(kind, entity_id), direction=direction
    )
    return _json(graph)
