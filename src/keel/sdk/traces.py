"""A request's trace from Python: `Keel(...).trace(request_id)`.

trace = keel.trace("req_...")   # {"trace_id", "request_id", "spans": [...]}, root first
for span in trace["spans"]:
    print(span["name"], span["duration_ms"], span["attributes"].get("gen_ai.usage.output_tokens"))

Each span has `span_id`, `parent_span_id`, `name`, `kind`, `start_time`, `end_time`,
`duration_ms`, `status` (unset, ok or error), `status_message` and `attributes`. A request whose
spans are not written yet (they are written in batches) raises `KeelAPIError` with status 404.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

__all__ = ["TraceAPI"]

RequestFn = Callable[..., dict[str, Any]]


class TraceAPI:
    def __init__(self, request: RequestFn) -> None:
        self._request = request

    def __call__(self, request_id: str) -> dict[str, Any]:
        """`GET /v1/keel/requests/{request_id}/trace`: the spans Keel kept of that call."""
        return self._request("GET", f"/v1/keel/requests/{quote(request_id, safe='')}/trace")
