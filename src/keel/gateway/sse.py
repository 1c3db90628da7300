"""Server-sent events in OpenAI's framing: `data: {json}\\n\\n`, closed by `data: [DONE]`."""

from __future__ import annotations

from typing import Any

import orjson

from keel.errors import KeelError

__all__ = ["DONE", "encode_error", "encode_event"]

DONE = b"data: [DONE]\n\n"


def encode_event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def encode_error(error: KeelError) -> bytes:
    """A stream that fails after it started ends with an error event and no [DONE]."""
    return encode_event(error.to_body())
