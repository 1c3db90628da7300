from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ConfigDict, field_validator
from starlette.requests import ClientDisconnect

from keel.errors import ClientClosedRequestError, InvalidRequestError, RequestTooLargeError

__all__ = ["StoredBody", "declared_length", "read_body"]


class StoredBody(BaseModel):
    """A management request body whose text ends up in the database: unknown fields are
    refused, and so is text no database column can hold (NUL, lone surrogates). Types are
    strict: `true` or `"7"` is not a number, `"yes"` or `1` not a boolean (a field that reads
    a JSON string as another type, such as a time, says `strict=False`)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="after")
    @classmethod
    def _storable_text(cls, value: Any) -> Any:
        for text in value if isinstance(value, list | tuple) else [value]:
            if isinstance(text, str):
                if "\x00" in text:
                    raise ValueError("text cannot contain NUL characters")
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError("text holds an invalid (lone surrogate) character") from None
        return value


def declared_length(headers: Mapping[str, str]) -> int | None:
    """The body size a request declares. One rule wherever a body is read: a content-length
    that is not a plain decimal number is the client's 400."""
    declared = headers.get("content-length")
    if declared is None:
        return None
    if not (declared.isascii() and declared.isdigit()):
        raise InvalidRequestError("the content-length header is not a number")
    return int(declared)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes."""
    declared = declared_length(request.headers)
    if declared is not None and declared > limit:
        raise RequestTooLargeError(f"the request body is over the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestTooLargeError(f"the request body is over the {limit}-byte limit")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientClosedRequestError("the client disconnected while sending the body") from None
    if not size:
        raise InvalidRequestError("the request body is empty; send a JSON object")
    return b"".join(chunks)
