from __future__ import annotations

from fastapi import Request
from starlette.requests import ClientDisconnect

from keel.errors import ClientClosedRequestError, InvalidRequestError, RequestTooLargeError

__all__ = ["read_body"]


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequestError("the content-length header is not a number")
        if int(declared) > limit:
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
