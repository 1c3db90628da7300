"""The API description served at /openapi.json: every body a route takes and every answer it
can give, errors included.

FastAPI writes most of it from the routes. Three things it cannot know are settled here:

- Keel answers a request that fails validation with 400 and its one error body
  (`keel.server.errors`), never FastAPI's 422 `HTTPValidationError`: every 422 becomes that 400.
- Routes that read their own body (the inference routes, model cards) describe it with
  `json_body`; the models it names land in `components/schemas` like any other.
- Each route lists the error statuses it can answer with `error_responses`, all with the
  `ErrorResponse` schema.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

__all__ = [
    "ErrorResponse",
    "Responses",
    "error_responses",
    "install_openapi",
    "json_body",
    "json_schema_ref",
]

Responses = dict[int | str, dict[str, Any]]

_COMPONENTS = "#/components/schemas/"
_DESCRIPTIONS: dict[int | str, str] = {
    400: "The request is invalid: a field, a parameter or the body (the error names it).",
    401: "No credential, or one Keel does not accept.",
    403: "The credential may not do this (role, key scope, network, residency, host).",
    404: "What the path names does not exist.",
    409: "It already exists, or it changed since it was read.",
    413: "The body is over `server.max_request_body_bytes`.",
    415: "The body is not declared as JSON.",
    429: "A rate limit or quota is exhausted; `retry-after` says when to try again.",
    500: "Keel failed; the server log has the details.",
    502: "The provider failed or answered with something unusable.",
    503: "The provider, or the shared quota store under a closed failure mode, is unavailable.",
    504: "The provider did not answer in time.",
    "4XX": "The provider refused the request: its own status, message, code and param.",
}


class ErrorDetail(BaseModel):
    message: str = Field(description="What went wrong, for a person.")
    type: str = Field(description="OpenAI's error type: invalid_request_error, ...")
    param: str | None = Field(description="The field or parameter at fault, if one is.")
    code: str | None = Field(description="A stable code (docs/api.md lists them), if any.")


class ErrorResponse(BaseModel):
    """Every error Keel answers, in OpenAI's shape."""

    error: ErrorDetail


def error_responses(*statuses: int | str) -> Responses:
    """`responses=` for a route that can answer `statuses`, each with the error body."""
    return {
        status: {"model": ErrorResponse, "description": _DESCRIPTIONS[status]}
        for status in statuses
    }


def json_schema_ref(model: type[BaseModel]) -> dict[str, Any]:
    """A reference to `model` in the components, carrying its definitions (the model and
    every model it uses) until `install_openapi` moves them there."""
    schema = model.model_json_schema(ref_template=_COMPONENTS + "{model}")
    definitions = schema.pop("$defs", {})
    name = model.__name__
    return {"$ref": _COMPONENTS + name, "$defs": {**definitions, name: schema}}


def json_body(model: type[BaseModel], **other_types: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` for a route that reads its own body: a JSON `model`, or the other
    content types given as {media type: schema}."""
    content = {"application/json": {"schema": json_schema_ref(model)}}
    content.update({media: {"schema": schema} for media, schema in other_types.items()})
    return {"requestBody": {"required": True, "content": content}}


def install_openapi(app: FastAPI) -> None:
    """Make `app.openapi()` (and /openapi.json) describe Keel as it answers."""
    generate: Callable[[], dict[str, Any]] = app.openapi
    # FastAPI's document, and ours made from it. FastAPI caches its own until the routes
    # change; it shares dicts with the routes' `openapi_extra`, which every app built in this
    # process uses, so ours is a copy.
    made: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def openapi() -> dict[str, Any]:
        generated = generate()
        if not made or made[0][0] is not generated:
            document = copy.deepcopy(generated)
            _hoist_definitions(document)
            _validation_errors_are_400(document)
            made[:] = [(generated, document)]
        return made[0][1]

    app.openapi = openapi  # type: ignore[method-assign]


def _hoist_definitions(schema: dict[str, Any]) -> None:
    components: dict[str, Any] = schema.setdefault("components", {}).setdefault("schemas", {})

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for name, definition in node.pop("$defs", {}).items():
                walk(definition)
                known = components.setdefault(name, definition)
                if known != definition:
                    raise ValueError(f"two different schemas are named {name!r}")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema.get("paths", {}))


def _validation_errors_are_400(schema: dict[str, Any]) -> None:
    components: dict[str, Any] = schema.get("components", {}).get("schemas", {})
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if responses.pop("422", None) is None:
                continue
            responses.setdefault(
                "400",
                {
                    "description": _DESCRIPTIONS[400],
                    "content": {
                        "application/json": {"schema": {"$ref": _COMPONENTS + "ErrorResponse"}}
                    },
                },
            )
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    if "ErrorResponse" not in components:
        for name, definition in json_schema_ref(ErrorResponse)["$defs"].items():
            components.setdefault(name, definition)
