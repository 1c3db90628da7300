"""One gateway call: its identity, timings, usage and outcome, and the record it becomes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from keel.errors import ClientClosedRequestError, KeelError
from keel.gateway.pricing import Usage
from keel.routing import AttemptTrace

if TYPE_CHECKING:
    from keel.gateway.caching import CachePlan
    from keel.governance.guardrails import Screening
    from keel.governance.policy import Estimate, Residency
    from keel.governance.quotas import Reservation
    from keel.identity import Actor
    from keel.monitoring.trace_context import TraceContext
    from keel.providers import Provider
    from keel.registry.view import ResolvedModel

__all__ = ["CLIENT_CLOSED_REQUEST", "Call"]

# nginx's convention for "the client went away before the response was complete".
CLIENT_CLOSED_REQUEST = ClientClosedRequestError.status_code


@dataclass(slots=True)
class Call:
    endpoint: str
    caller: str | None = None
    request_id: str = field(default_factory=lambda: f"req_{uuid.uuid4().hex}")
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: float = field(default_factory=time.perf_counter)
    # The perf_counter reading at `created_at`: places every perf_counter time on the wall clock.
    created_clock: float = field(default_factory=time.perf_counter)
    model_requested: str | None = None
    group: str | None = None
    trace: AttemptTrace = field(default_factory=AttemptTrace)
    stream: bool = False
    upstream_s: float = 0.0
    first_token_at: float | None = None
    usage: Usage | None = None
    cost_usd: float | None = None
    status_code: int = 200
    error: KeelError | None = None
    finished_at: float | None = None
    # For streams, Keel's overhead is what it spent before the first byte; fixed then.
    stream_overhead_ms: float | None = None
    request_headers: Mapping[str, str] = field(default_factory=dict)
    cache_plan: CachePlan | None = None
    cache_status: str | None = None  # "hit" or "miss" for cacheable requests
    registry_version: str | None = None  # "name@3" when the model came from the registry
    resolved: ResolvedModel | None = None
    actor: Actor | None = None
    residency: Residency | None = None
    screening: Screening | None = None
    reservation: Reservation | None = None
    fallback_reservations: list[tuple[str, Reservation]] = field(default_factory=list)
    estimate: Estimate | None = None  # what the reservation was made for
    relaying: bool = False  # a stream's relay started (it finishes the call itself)
    answered: bool = False  # a provider produced an answer (paid for, whatever came after)
    # The answering upstream's request id and rate-limit headers, relayed to the client.
    upstream_headers: dict[str, str] = field(default_factory=dict)
    # The parsed request and, unless streamed, the answer: references only, for observers that
    # opt in to content (payload capture, traces with content); nothing is copied here.
    request: BaseModel | None = None
    response: dict[str, Any] | None = None
    # For the trace, built after the call: the caller's trace continued (set when tracing is
    # on), the steps timed on the way as (name, start, end, attributes) in perf_counter time,
    # and what a stream said of itself (a non-stream's answer says it in `response`).
    trace_context: TraceContext | None = None
    phases: list[tuple[str, float, float, dict[str, Any] | None]] = field(default_factory=list)
    response_model: str | None = None
    finish_reasons: list[str] = field(default_factory=list)

    @property
    def provider(self) -> Provider | None:
        """The provider of the deployment that answered (or was tried last)."""
        deployment = self.trace.deployment
        return deployment.provider if deployment else None

    def elapsed_ms(self) -> float:
        end = self.finished_at if self.finished_at is not None else time.perf_counter()
        return (end - self.started) * 1000

    def overhead_ms(self) -> float:
        """Time spent in Keel so far, upstream time excluded."""
        return max(self.elapsed_ms() - self.upstream_s * 1000, 0.0)

    def phase(self, name: str, started: float, attributes: dict[str, Any] | None = None) -> None:
        """A step that began at `started` (perf_counter) ends now."""
        self.phases.append((name, started, time.perf_counter(), attributes))

    def fail(self, error: KeelError) -> None:
        self.error = error
        self.status_code = error.status_code

    def headers(self) -> dict[str, str]:
        headers = dict(self.upstream_headers)
        headers["x-keel-request-id"] = self.request_id
        if self.cache_status is not None:
            headers["x-keel-cache"] = self.cache_status
        if self.cache_plan is not None and self.cache_plan.guard_refusal is not None:
            headers["x-keel-cache-guard"] = self.cache_plan.guard_refusal
        if self.registry_version is not None:
            headers["x-keel-registry-version"] = self.registry_version
        if self.screening is not None and self.screening.warnings:
            # Rule names only: what matched stays out of headers as it does out of records.
            headers["x-keel-guardrail-warnings"] = ", ".join(self.screening.warnings)
        if self.provider is not None and self.cache_status != "hit":
            headers["x-keel-deployment"] = self.provider.config.id
            headers["x-keel-attempts"] = str(self.trace.attempts)
        if not self.stream:
            headers["x-keel-cost-usd"] = (
                "unknown" if self.cost_usd is None else f"{self.cost_usd:.8f}"
            )
        headers["x-keel-overhead-ms"] = f"{self.overhead_ms():.3f}"
        if self.trace_context is not None:
            headers["x-keel-trace-id"] = self.trace_context.trace_id
            headers["traceparent"] = self.trace_context.traceparent()
        return headers

    def record(self) -> dict[str, Any]:
        """The request record. Text a client or provider controls is cut to its column's size
        and cleaned of NUL characters, so no value can make the database refuse the batch."""
        if self.finished_at is None:
            self.finished_at = time.perf_counter()
        provider = self.provider
        usage = self.usage
        return {
            "id": self.request_id,
            "created_at": self.created_at,
            "endpoint": self.endpoint,
            "model_requested": _text(self.model_requested, 255),
            "provider": provider.name if provider else None,
            "deployment": provider.config.id if provider else None,
            "upstream_model": provider.upstream_model if provider else None,
            "stream": self.stream,
            "status_code": self.status_code,
            "error_type": self.error.error_type if self.error else None,
            "error_message": _text(self.error.message, 1000) if self.error else None,
            "latency_ms": self.elapsed_ms(),
            "ttft_ms": (
                (self.first_token_at - self.started) * 1000 if self.first_token_at else None
            ),
            "overhead_ms": (
                self.stream_overhead_ms
                if self.stream_overhead_ms is not None
                else self.overhead_ms()
            ),
            "prompt_tokens": usage.prompt_tokens if usage else None,
            "completion_tokens": usage.completion_tokens if usage else None,
            "cached_tokens": usage.cached_tokens if usage else None,
            "reasoning_tokens": usage.reasoning_tokens if usage else None,
            "cost_usd": self.cost_usd,
            "caller": _text(self.actor.name if self.actor else self.caller, 255),
            "team": _text(self.actor.team, 128) if self.actor else None,
            "key_id": self.actor.key_id if self.actor else None,
            "environment": self.actor.environment if self.actor else None,
            "guardrails": self._guardrail_decisions(),
            "attempts": self.trace.attempts,
            "cache": self.cache_status,
            "registry_version": _text(self.registry_version, 255),
        }

    def _guardrail_decisions(self) -> list[dict[str, Any]] | None:
        if self.screening is not None:
            return self.screening.decisions or None
        # A blocked input never produced a screening; the error carries what was decided.
        decisions: list[dict[str, Any]] | None = getattr(self.error, "decisions", None)
        return decisions or None


def _text(value: str | None, size: int) -> str | None:
    return None if value is None else value.replace("\x00", "")[:size]
