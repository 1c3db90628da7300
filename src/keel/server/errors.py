"""One place renders every error as OpenAI's body: {"error": {message, type, param, code}}."""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from keel.errors import InvalidRequestError, KeelError, PermissionDeniedError

__all__ = ["error_response", "install_error_handlers"]

log = logging.getLogger("keel.server")

_HTTP_ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    429: "rate_limit_error",
}


def error_response(error: KeelError, headers: dict[str, str] | None = None) -> Response:
    return Response(
        content=orjson.dumps(error.to_body()),
        status_code=error.status_code,
        media_type="application/json",
        headers={**error.headers, **(headers or {})},
    )


async def _keel_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, KeelError)
    if isinstance(exc, PermissionDeniedError):
        _audit_refusal(request, exc)
    return error_response(exc)


def _audit_refusal(request: Request, error: PermissionDeniedError) -> None:
    """Every refusal of a management route, the permission matrix's and the route's own."""
    keel = getattr(request.app.state, "keel", None)
    actor = request.scope.get("state", {}).get("actor")
    audit = getattr(keel, "audit", None)
    if audit is not None:
        audit.record(
            "access.denied",
            actor=actor,
            target=f"{request.method} {request.url.path}"[:255],
            outcome="403",
            detail={"code": error.code},
        )


async def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        context = first.get("ctx")
        reason = context.get("error") if isinstance(context, dict) else None
        return error_response(
            InvalidRequestError(
                f"the body is not valid JSON ({reason or 'parse error'})", code="invalid_json"
            )
        )
    # The first part says where the value came from; a field may itself be called `path`.
    parts = list(first["loc"])
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    location = ".".join(str(part) for part in parts)
    if not location:
        # The body as a whole: a list, a string or a number where an object was expected.
        if first.get("type") in ("model_attributes_type", "dict_type"):
            message = "the body must be a JSON object"
        elif first.get("type") == "missing":
            message = "the request body is empty; send a JSON object"
        else:
            message = str(first["msg"])
        return error_response(InvalidRequestError(message))
    return error_response(InvalidRequestError(f"{location}: {first['msg']}", param=location))


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    body = {
        "error": {
            "message": str(exc.detail),
            "type": _HTTP_ERROR_TYPES.get(exc.status_code, "invalid_request_error"),
            "param": None,
            "code": None,
        }
    }
    return Response(
        content=orjson.dumps(body),
        status_code=exc.status_code,
        media_type="application/json",
        headers=dict(exc.headers or {}),
    )


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    # The traceback goes to the server log only; the client gets a plain message.
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(KeelError("internal server error; see the Keel server log"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(KeelError, _keel_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
