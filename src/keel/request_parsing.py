"""Inference request bodies, from bytes to Keel's request models (`keel.schemas`).

Everything wrong with a body is a 400 here, before any other step sees it: JSON that does not
parse, a body that is not an object, a field of the wrong type or out of OpenAI's range, and
numbers no JSON encoder on the way can write — an integer outside 64 bits or a decimal too large
to be finite, anywhere in the body, unknown fields included. Whatever passes can be serialized
again (for the upstream, the cache key, the records) without failing.

A 400 names the offending field as a dotted path into the body (`messages.0.content`), the same
path the client would follow, even where the field's type is a union of several shapes.
"""

from __future__ import annotations

import math
import re
from typing import Any, TypeVar

import pydantic_core
from pydantic import BaseModel, ValidationError

from keel.errors import InvalidRequestError

__all__ = ["parse_request"]

RequestT = TypeVar("RequestT", bound=BaseModel)

# What any JSON encoder can write back: signed or unsigned 64-bit integers.
_SMALLEST_INTEGER = -(2**63)
_LARGEST_INTEGER = 2**64 - 1
# Only a run of 19 digits can spell an integer beyond 64 bits, and only a three-digit exponent
# (or such a run) a decimal beyond the largest finite one: a body with neither, which is nearly
# every body, skips the walk over its values (a long list of token ids is millions of them).
_MAYBE_OUT_OF_RANGE = re.compile(rb"\d{19}|[eE]\+?\d{3}")
# What the one-pass parse might take that the checks below refuse: out-of-range numbers, and
# the non-standard NaN and Infinity.
_NEEDS_A_LOOK = re.compile(rb"\d{19}|[eE]\+?\d{3}|NaN|Infinity")


def parse_request(schema: type[RequestT], raw_body: bytes) -> RequestT:
    """The body as `schema`, or an `InvalidRequestError` naming what is wrong and where."""
    if not _NEEDS_A_LOOK.search(raw_body):
        # Nearly every body: one pass from bytes to the model. Anything it refuses goes the
        # long way below, which says precisely what is wrong and where.
        try:
            return schema.model_validate_json(raw_body)
        except ValidationError:
            pass
    try:
        document = pydantic_core.from_json(raw_body, allow_inf_nan=False)
    except ValueError as exc:
        if "number out of range" in str(exc):
            raise InvalidRequestError(f"the body holds a number out of range: {exc}") from None
        raise InvalidRequestError(
            f"the body is not valid JSON: {exc}", code="invalid_json"
        ) from None
    if not isinstance(document, dict):
        raise InvalidRequestError("the body must be a JSON object")
    if _MAYBE_OUT_OF_RANGE.search(raw_body):
        _check_numbers(document)
    try:
        return schema.model_validate(document)
    except ValidationError as exc:
        raise _invalid_request(exc, document) from None


def _check_numbers(document: dict[str, Any]) -> None:
    """Refuse integers beyond 64 bits and non-finite decimals (`1e400` parses as infinity)."""
    pending: list[tuple[tuple[str | int, ...], Any]] = [((), document)]
    while pending:
        path, node = pending.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            if isinstance(value, dict | list):
                pending.append(((*path, key), value))
            elif isinstance(value, bool) or value is None or isinstance(value, str):
                continue
            elif isinstance(value, int):
                if not _SMALLEST_INTEGER <= value <= _LARGEST_INTEGER:
                    param = _dotted((*path, key))
                    raise InvalidRequestError(
                        f"{param}: integers must fit in 64 bits (between -2^63 and 2^64-1)",
                        param=param,
                    )
            elif isinstance(value, float) and not math.isfinite(value):
                param = _dotted((*path, key))
                raise InvalidRequestError(f"{param}: the number is too large", param=param)


def _dotted(path: tuple[str | int, ...]) -> str:
    return ".".join(str(part) for part in path)


# Errors that say "this branch of a union is not the shape sent", as opposed to "this is the
# shape, but a value in it is wrong": the second kind tells the client what to fix.
def _is_shape_mismatch(error_type: str) -> bool:
    return error_type.endswith("_type") or error_type in {"literal_error", "union_tag_invalid"}


def _invalid_request(exc: ValidationError, document: dict[str, Any]) -> InvalidRequestError:
    errors = exc.errors()
    located = [(_body_path(error["loc"], document, error["type"]), error) for error in errors]
    # Pydantic reports every branch of a union that failed; of the errors about the first field
    # in trouble, the one that got deepest into the body, preferring a wrong value over a wrong
    # shape, is the one that matches what the client meant to send.
    first_field = located[0][0][:1]
    candidates = [item for item in located if item[0][:1] == first_field]
    path, error = max(
        candidates, key=lambda item: (len(item[0]), not _is_shape_mismatch(item[1]["type"]))
    )
    param = _dotted(path)
    message = f"{param}: {error['msg']}" if param else str(error["msg"])
    return InvalidRequestError(message, param=param or None)


def _body_path(
    location: tuple[str | int, ...], document: dict[str, Any], error_type: str
) -> tuple[str | int, ...]:
    """`location` as a path into the body: pydantic also names the union member it tried
    (`temperature.float`, `prompt.list[int]`), which is no place the client can find."""
    path: list[str | int] = []
    node: Any = document
    for position, part in enumerate(location):
        in_object = isinstance(node, dict) and isinstance(part, str) and part in node
        in_array = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_object or in_array:
            path.append(part)
            node = node[part]
        elif error_type == "missing" and position == len(location) - 1:
            path.append(part)  # the required field the client left out
    return tuple(path)
