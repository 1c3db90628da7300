"""W3C Trace Context: continuing a caller's `traceparent`, and the one Keel answers with.

This runs on the request path, so it is one regular expression and a random number: no
OpenTelemetry import, no context objects. The spans themselves are built after the call
(see `keel.monitoring.tracing`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["TraceContext", "continue_trace", "new_span_id", "new_trace_id"]

# version-traceid-parentid-flags, and whatever a later version appends after a dash.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_INVALID_TRACE_ID = "0" * 32
_INVALID_SPAN_ID = "0" * 16


@dataclass(slots=True)
class TraceContext:
    """Where a call's spans go: its trace, the id of Keel's root span in it, and the caller's
    span that root continues (None when Keel started the trace)."""

    trace_id: str  # 32 lowercase hex digits
    span_id: str  # 16 lowercase hex digits: Keel's root span
    parent_span_id: str | None = None
    sampled: bool = True  # the caller's sampled flag; Keel keeps its own spans either way
    tracestate: str | None = None

    def traceparent(self) -> str:
        """The `traceparent` naming Keel's root span, for the response and for children."""
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"


# Ids need uniqueness, not secrecy: the module's generator, which Python reseeds after a fork,
# so forked workers never repeat each other's ids.
def new_span_id() -> str:
    return f"{random.getrandbits(64) or 1:016x}"


def new_trace_id() -> str:
    return f"{random.getrandbits(128) or 1:032x}"


def continue_trace(
    headers: Mapping[str, str], fallback_trace_id: str | None = None
) -> TraceContext:
    """The caller's trace when it sent a valid `traceparent`, else a new one (with
    `fallback_trace_id` as its id when that is 32 hex digits). A malformed header is ignored,
    as the W3C specification asks, never refused."""
    parent = _parse(headers.get("traceparent"))
    if parent is not None:
        trace_id, parent_span_id, sampled = parent
        state = headers.get("tracestate")
        return TraceContext(
            trace_id,
            new_span_id(),
            parent_span_id,
            sampled,
            state[:512] if state else None,
        )
    if (
        fallback_trace_id is None
        or not _TRACE_ID.fullmatch(fallback_trace_id)
        or fallback_trace_id == _INVALID_TRACE_ID
    ):
        fallback_trace_id = new_trace_id()
    return TraceContext(fallback_trace_id, new_span_id())


def _parse(value: str | None) -> tuple[str, str, bool] | None:
    if not value:
        return None
    match = _TRACEPARENT.fullmatch(value.strip().lower())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    # Version ff is forbidden; a later version may append fields, version 00 may not.
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _INVALID_TRACE_ID or span_id == _INVALID_SPAN_ID:
        return None
    return trace_id, span_id, bool(int(flags, 16) & 1)
