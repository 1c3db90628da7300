"""OTLP export of span trees, over HTTP/protobuf or gRPC.

The trees are already finished, with Keel's own ids, so they go to the OpenTelemetry SDK's
exporter as finished spans (`ReadableSpan`) through its `BatchSpanProcessor`: a bounded queue and
a background thread that exports in batches. A full queue drops spans; a slow or dead collector
costs that thread time, never a request's. OpenTelemetry's SDK is imported only when an
endpoint is configured.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from keel import __version__
from keel.monitoring.spans import Span, SpanTree

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from keel.monitoring.tracing_config import OtlpConfig

__all__ = ["OtlpExport"]

log = logging.getLogger("keel.monitoring.traces")

_SCOPE = "keel.gateway"
_SCHEDULE_DELAY_MS = 500


class OtlpExport:
    def __init__(self, config: OtlpConfig) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        assert config.endpoint is not None
        self.endpoint = config.endpoint
        self._resource = Resource.create(
            {"service.name": config.service_name, "service.version": __version__}
        )
        self._scope = InstrumentationScope(_SCOPE, __version__)
        self._timeout_s = config.timeout_s
        self._processor: BatchSpanProcessor = BatchSpanProcessor(
            _exporter(config),
            max_queue_size=config.max_queue_size,
            max_export_batch_size=min(512, config.max_queue_size),
            schedule_delay_millis=_SCHEDULE_DELAY_MS,
            export_timeout_millis=config.timeout_s * 1000,
        )

    def export(self, tree: SpanTree) -> None:
        """Queue `tree` for export; returns at once. A caller that asked not to be sampled
        (`traceparent` flags 00) is not exported: Keel keeps its own copy regardless."""
        if not tree.sampled:
            return
        for span in tree.spans:
            self._processor.on_end(self._readable(span, tree.tracestate))

    def flush(self, timeout_s: float | None = None) -> bool:
        return bool(self._processor.force_flush(int((timeout_s or self._timeout_s) * 1000)))

    def shutdown(self) -> None:
        """Export what is queued (within the export timeout), then stop the thread."""
        self._processor.shutdown()  # type: ignore[no-untyped-call]

    def _readable(self, span: Span, tracestate: str | None) -> Any:
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
        from opentelemetry.trace.span import TraceState

        state = _trace_state(TraceState, tracestate)
        sampled = TraceFlags(TraceFlags.SAMPLED)
        context = SpanContext(int(span.trace_id, 16), int(span.span_id, 16), False, sampled, state)
        parent = (
            SpanContext(int(span.trace_id, 16), int(span.parent_span_id, 16), True, sampled, state)
            if span.parent_span_id
            else None
        )
        if span.status == "error":
            status = Status(StatusCode.ERROR, span.status_message)
        elif span.status == "ok":
            status = Status(StatusCode.OK)
        else:
            status = Status(StatusCode.UNSET)
        return ReadableSpan(
            span.name,
            context=context,
            parent=parent,
            resource=self._resource,
            attributes=_attributes(span.attributes),
            kind=getattr(SpanKind, span.kind.upper()),
            status=status,
            start_time=span.start_ns,
            end_time=span.end_ns,
            instrumentation_scope=self._scope,
        )


def _exporter(config: OtlpConfig) -> Any:
    endpoint = config.endpoint or ""
    headers = {name: value.get_secret_value() for name, value in config.headers.items()}
    if config.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        target = endpoint.removeprefix("http://").removeprefix("https://").rstrip("/")
        return GrpcExporter(
            endpoint=target,
            insecure=not endpoint.startswith("https://"),
            headers=headers or None,
            timeout=config.timeout_s,
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter(endpoint=endpoint, headers=headers or None, timeout=config.timeout_s)


def _trace_state(state_type: Any, header: str | None) -> Any:
    if not header:
        return None
    try:
        return state_type.from_header([header])
    except Exception:
        return None  # a malformed tracestate is dropped, as the W3C specification allows


def _attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    """OTLP attribute values are scalars or lists of one scalar type: anything richer (the
    guardrail decisions) goes as JSON text."""
    shaped: dict[str, Any] = {}
    for name, value in attributes.items():
        if value is None:
            continue
        if isinstance(value, str | bool | int | float):
            shaped[name] = value
        elif isinstance(value, list | tuple) and _uniform_scalars(value):
            shaped[name] = list(value)
        else:
            shaped[name] = json.dumps(value, default=str, ensure_ascii=False)
    return shaped


def _uniform_scalars(values: list[Any] | tuple[Any, ...]) -> bool:
    kinds = {type(value) for value in values}
    return len(kinds) <= 1 and kinds <= {str, bool, int, float}
