"""Spans built after the fact: a tree of timed, attributed spans with explicit start and end
times, so nothing on a request path ever opens a tracing context. The gateway's calls become
trees here (see `keel.monitoring.call_spans`); anything else Keel runs (a workflow, a batch)
builds its own tree the same way and hands it to `Tracing.emit`.

    tree = SpanTree("invoke_workflow triage", start_ns=started, kind="internal")
    step = tree.add("execute_tool search", start_ns=a, end_ns=b, attributes={...})
    tree.add("chat gpt-4o", start_ns=c, end_ns=d, parent=step, kind="client")
    tracing.emit(tree.finish(end_ns=done))
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from keel.monitoring.trace_context import TraceContext, new_span_id, new_trace_id

__all__ = ["Span", "SpanKind", "SpanStatus", "SpanTree", "wall_ns"]

SpanKind = Literal["internal", "server", "client", "producer", "consumer"]
SpanStatus = Literal["unset", "ok", "error"]


@dataclass(slots=True)
class Span:
    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: SpanKind
    start_ns: int  # Unix epoch nanoseconds
    end_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)
    status: SpanStatus = "unset"
    status_message: str | None = None
    request_id: str | None = None

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6

    def set(self, **attributes: Any) -> Span:
        """Add attributes (dots in names as `**{"gen_ai.request.model": m}`); None skips one."""
        self.attributes.update({k: v for k, v in attributes.items() if v is not None})
        return self

    def fail(self, message: str | None, error_type: str | None = None) -> Span:
        self.status = "error"
        self.status_message = message
        if error_type is not None:
            self.attributes["error.type"] = error_type
        return self


class SpanTree:
    """One root span and its descendants, all in one trace. `parent` continues a caller's
    trace (the root becomes the child of the caller's span); without it a new trace starts."""

    def __init__(
        self,
        name: str,
        *,
        start_ns: int,
        kind: SpanKind = "internal",
        attributes: dict[str, Any] | None = None,
        parent: TraceContext | None = None,
        request_id: str | None = None,
    ) -> None:
        if parent is not None:
            trace_id, span_id, parent_span_id = (
                parent.trace_id,
                parent.span_id,
                parent.parent_span_id,
            )
            self.sampled = parent.sampled
            self.tracestate = parent.tracestate
        else:
            trace_id, span_id, parent_span_id = new_trace_id(), new_span_id(), None
            self.sampled = True
            self.tracestate = None
        self.request_id = request_id
        self.root = Span(
            trace_id,
            span_id,
            parent_span_id,
            name,
            kind,
            start_ns,
            start_ns,
            dict(attributes or {}),
            request_id=request_id,
        )
        self.spans: list[Span] = [self.root]

    @property
    def trace_id(self) -> str:
        return self.root.trace_id

    def add(
        self,
        name: str,
        *,
        start_ns: int,
        end_ns: int,
        parent: Span | None = None,
        kind: SpanKind = "internal",
        attributes: dict[str, Any] | None = None,
    ) -> Span:
        """A finished child span (of the root unless `parent` says otherwise)."""
        span = Span(
            self.root.trace_id,
            new_span_id(),
            (parent or self.root).span_id,
            name,
            kind,
            start_ns,
            max(end_ns, start_ns),
            dict(attributes or {}),
            request_id=self.request_id,
        )
        self.spans.append(span)
        return span

    def finish(self, *, end_ns: int | None = None) -> SpanTree:
        """End the root (now, unless given); it ends no earlier than its last child."""
        end = end_ns if end_ns is not None else wall_ns()
        self.root.end_ns = max([end, self.root.start_ns, *(s.end_ns for s in self.spans[1:])])
        return self


def wall_ns(moment: datetime | None = None) -> int:
    """Unix epoch nanoseconds of `moment` (now by default)."""
    if moment is None:
        return time.time_ns()
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
