"""Prometheus metrics: what every gateway call did, and the state Keel holds, per replica.

`Metrics.observe` is a call observer (see `keel.gateway.CallObserver`): once per finished call
it bumps counters and histograms, a few microseconds in all, and never waits. What is state
rather than an event (circuits, in-flight requests, writer queues, cache sizes) is read when
Prometheus scrapes, by `_StateCollector`, so the request path pays nothing for it.

Each app has its own `CollectorRegistry`, never prometheus_client's global one: several apps
can live in one process (the tests do that), and each replica is scraped on its own. Other
parts of Keel add their collectors with `metrics.registry.register(...)`.

Labels are bounded by configuration, never by traffic: the model label is the gateway model
(group) a request was routed to, never the name a client sent; error labels come from Keel's
error classes, never from an upstream's body; no user, key or request id is ever a label.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest as text_format
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_format
from prometheus_client.registry import Collector

from keel import __version__
from keel.errors import QuotaExceededError, QuotaUnavailableError

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from keel.gateway.caching import ResponseCaching
    from keel.gateway.call import Call
    from keel.monitoring.config import MetricsConfig
    from keel.routing import Router
    from keel.store.batching import BatchWriter

__all__ = ["Metrics"]

M = TypeVar("M", bound=MetricWrapperBase)

# The classic text format; what Prometheus falls back to, and what `curl` gets.
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"
# Request and response bodies: from a one-line chat to a long document.
SIZE_BUCKETS_BYTES = (256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216)
# Streaming speed: from a fast small model (1 ms a token) to a struggling one.
TOKEN_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
# Keel's own share of a call: its budget is a millisecond.
OVERHEAD_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)

_WHO = ("model", "deployment", "provider", "team", "environment")
_UPSTREAM = ("model", "deployment", "provider")
_CIRCUIT_STATES = ("closed", "half_open", "open")


class _Labelled(Generic[M]):
    """A metric whose children are cached by label values: `labels()` validates and locks on
    every call; a dict lookup is all a call needs once a series exists."""

    __slots__ = ("_children", "metric")

    def __init__(self, metric: M) -> None:
        self.metric = metric
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child


class Metrics:
    def __init__(
        self,
        config: MetricsConfig,
        *,
        router: Router,
        recorder: BatchWriter[Any],
        audit: BatchWriter[Any] | None = None,
        caching: ResponseCaching | None = None,
    ) -> None:
        self.config = config
        self.registry = CollectorRegistry()
        # Calls handed to the gateway and calls it finished; in flight is the difference,
        # worked out at scrape time. Plain ints: only the event loop touches them.
        self.started = 0
        self.finished = 0
        self._router = router
        self._caching = caching
        self._writers: dict[str, BatchWriter[Any]] = {"requests": recorder}
        if audit is not None:
            self._writers["audit"] = audit
        # Deployment ids are unique across groups: each belongs to exactly one.
        self._group_of = {d.id: group.id for group in router.groups() for d in group.deployments}

        def counter(name: str, doc: str, labels: Iterable[str]) -> _Labelled[Counter]:
            return _Labelled(Counter(name, doc, tuple(labels), registry=self.registry))

        def histogram(
            name: str, doc: str, labels: Iterable[str], buckets: Iterable[float]
        ) -> _Labelled[Histogram]:
            return _Labelled(
                Histogram(name, doc, tuple(labels), registry=self.registry, buckets=tuple(buckets))
            )

        durations = config.duration_buckets_s
        self._requests = counter(
            "keel_requests_total",
            "Gateway calls finished, by outcome's status class (2xx, 4xx, 5xx).",
            ("endpoint", *_WHO, "status_class"),
        )
        self._errors = counter(
            "keel_request_errors_total",
            "Gateway calls that ended in an error, by the error's type and Keel code.",
            ("endpoint", *_WHO, "error_type", "code"),
        )
        self._duration = histogram(
            "keel_request_duration_seconds",
            "From arrival to the end of the answer (of the stream, when streaming).",
            ("endpoint", *_UPSTREAM),
            durations,
        )
        self._overhead = histogram(
            "keel_gateway_overhead_seconds",
            "Time spent in Keel itself: the duration minus the upstream attempts.",
            ("endpoint",),
            OVERHEAD_BUCKETS_S,
        )
        self._upstream = histogram(
            "keel_upstream_duration_seconds",
            "Time spent in upstream attempts (retries and fallbacks included).",
            _UPSTREAM,
            durations,
        )
        self._ttft = histogram(
            "keel_time_to_first_token_seconds",
            "Streams: from arrival to the first chunk carrying output.",
            _UPSTREAM,
            durations,
        )
        self._tpot = histogram(
            "keel_time_per_output_token_seconds",
            "Streams: from the first output chunk to the end, per further output token.",
            _UPSTREAM,
            TOKEN_BUCKETS_S,
        )
        self._input_tokens = counter(
            "keel_input_tokens_total",
            "Input (prompt) tokens providers processed, cached ones included.",
            _WHO,
        )
        self._cached_tokens = counter(
            "keel_input_cached_tokens_total",
            "Of the input tokens, those read from the provider's prompt cache.",
            _WHO,
        )
        self._output_tokens = counter(
            "keel_output_tokens_total",
            "Output (completion) tokens providers produced, reasoning included.",
            _WHO,
        )
        self._reasoning_tokens = counter(
            "keel_output_reasoning_tokens_total",
            "Of the output tokens, reasoning tokens (as the provider reports them).",
            _WHO,
        )
        self._cost = counter("keel_cost_usd_total", "What the calls cost, in US dollars.", _WHO)
        self._unpriced = counter(
            "keel_unpriced_requests_total",
            "Answered calls whose cost is unknown (no price for the model).",
            ("model", "deployment"),
        )
        self._request_size = histogram(
            "keel_request_size_bytes",
            "Request bodies, as declared by Content-Length.",
            ("endpoint", "model"),
            SIZE_BUCKETS_BYTES,
        )
        self._response_size = histogram(
            "keel_response_size_bytes",
            "Response bodies sent, server-sent events included for streams.",
            ("endpoint", "model"),
            SIZE_BUCKETS_BYTES,
        )
        self._cache = counter(
            "keel_cache_requests_total",
            "Cacheable chat completions, by whether the response cache answered them.",
            ("model", "result"),
        )
        self._attempts = counter(
            "keel_upstream_attempts_total",
            "Upstream attempts, by deployment and outcome (ok, or why it failed).",
            ("model", "deployment", "outcome"),
        )
        self._retries = counter(
            "keel_retries_total",
            "Upstream attempts beyond each call's first (retries and fallbacks).",
            ("model",),
        )
        self._fallbacks = counter(
            "keel_fallbacks_total",
            "Calls answered (or last tried) by a fallback model instead of the one routed to.",
            ("model", "fallback"),
        )
        self._quota = counter(
            "keel_quota_rejections_total",
            "Calls refused by a quota: exceeded, or the quota store unavailable (fail closed).",
            ("model", "team", "environment", "reason"),
        )
        self._guardrails = counter(
            "keel_guardrail_actions_total",
            "Guardrail decisions, by rule, action and stage.",
            ("rule", "action", "stage"),
        )
        self.registry.register(_StateCollector(self))

    # -- the request path ------------------------------------------------------------------

    def call_started(self) -> None:
        self.started += 1

    def observe(self, call: Call, record: dict[str, Any]) -> None:
        """A `CallObserver`: count one finished call."""
        self.finished += 1
        endpoint = call.endpoint
        model = call.group or ""
        deployment = record["deployment"] or ""
        provider = record["provider"] or ""
        actor = call.actor
        team = (actor.team or "") if actor is not None else ""
        environment = actor.environment if actor is not None else ""
        who = (model, deployment, provider, team, environment)
        upstream = (model, deployment, provider)
        status = call.status_code

        self._requests(endpoint, *who, f"{status // 100}xx").inc()
        error = call.error
        if error is not None:
            kind = type(error)
            self._errors(endpoint, *who, kind.error_type, kind.default_code or "").inc()
            if isinstance(error, QuotaExceededError | QuotaUnavailableError):
                reason = "exceeded" if isinstance(error, QuotaExceededError) else "unavailable"
                self._quota(model, team, environment, reason).inc()
        elif status >= 400:
            # No KeelError: the client went away (499), or Keel's own failure (500).
            kind_name = "client_closed_request" if status == 499 else "server_error"
            code = "client_closed_request" if status == 499 else "internal_error"
            self._errors(endpoint, *who, kind_name, code).inc()

        self._duration(endpoint, *upstream).observe(record["latency_ms"] / 1000)
        self._overhead(endpoint).observe(record["overhead_ms"] / 1000)
        if call.upstream_s > 0:
            self._upstream(*upstream).observe(call.upstream_s)
        if call.first_token_at is not None:
            self._ttft(*upstream).observe(call.first_token_at - call.started)
        size = call.request_headers.get("content-length")
        if size is not None and size.isdigit():
            self._request_size(endpoint, model).observe(int(size))

        hit = call.cache_status == "hit"
        if call.cache_status is not None:
            self._cache(model, call.cache_status).inc()
        usage = call.usage
        if usage is not None and not hit:
            # What providers processed: a cache hit's usage was paid for by an earlier call.
            self._input_tokens(*who).inc(usage.prompt_tokens)
            self._output_tokens(*who).inc(usage.completion_tokens)
            if usage.cached_tokens:
                self._cached_tokens(*who).inc(usage.cached_tokens)
            if usage.reasoning_tokens:
                self._reasoning_tokens(*who).inc(usage.reasoning_tokens)
            if (
                call.stream
                and call.first_token_at is not None
                and call.finished_at is not None
                and usage.completion_tokens > 1
            ):
                per_token = (call.finished_at - call.first_token_at) / (usage.completion_tokens - 1)
                self._tpot(*upstream).observe(per_token)
        cost = call.cost_usd
        if cost:
            self._cost(*who).inc(cost)
        elif cost is None and call.answered and not hit:
            self._unpriced(model, deployment).inc()

        tried = call.trace.tried
        if tried:
            group_of = self._group_of
            for tried_deployment, outcome in tried:
                self._attempts(group_of.get(tried_deployment, ""), tried_deployment, outcome).inc()
            if len(tried) > 1:
                self._retries(model).inc(len(tried) - 1)
            answered_by = call.trace.group
            if answered_by is not None and call.group is not None and answered_by != call.group:
                self._fallbacks(model, answered_by).inc()

        decisions = record["guardrails"]
        if decisions:
            for decision in decisions:
                self._guardrails(decision["rule"], decision["action"], decision["stage"]).inc()

    def observe_response_size(self, call: Call, size: int) -> None:
        self._response_size(call.endpoint, call.group or "").observe(size)

    # -- extension and exposition ----------------------------------------------------------

    def watch_writer(self, name: str, writer: BatchWriter[Any]) -> None:
        """Export a batched writer's queue depth and written/dropped counts as `writer=name`."""
        self._writers[name] = writer

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The scrape body and its content type: OpenMetrics when `accept` asks for it, the
        Prometheus text format otherwise."""
        if accept and _asks_for_openmetrics(accept):
            body: bytes = openmetrics_format(self.registry)  # type: ignore[no-untyped-call]
            return body, OPENMETRICS
        return text_format(self.registry), TEXT_FORMAT


def _asks_for_openmetrics(accept: str) -> bool:
    # Prometheus sends `application/openmetrics-text;version=1.0.0;q=0.5,...,text/plain;...`;
    # the versions it may name are all read as 1.0.0, the one this library writes.
    return any(
        media.split(";", 1)[0].strip().lower() == "application/openmetrics-text"
        for media in accept.split(",")
    )


class _StateCollector(Collector):
    """Read at scrape time, on the event loop (routing state has no locks)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        build = GaugeMetricFamily("keel_build_info", "Keel's version.", labels=["version"])
        build.add_metric([__version__], 1)
        yield build
        in_flight = GaugeMetricFamily(
            "keel_requests_in_flight", "Gateway calls started and not yet finished."
        )
        in_flight.add_metric([], max(metrics.started - metrics.finished, 0))
        yield in_flight
        yield from self._deployments()
        yield from self._writers()
        yield from self._caches()

    def _deployments(self) -> Iterator[Metric]:
        circuit = GaugeMetricFamily(
            "keel_deployment_circuit_state",
            "1 for the state each deployment's circuit breaker is in, 0 for the others.",
            labels=["model", "deployment", "state"],
        )
        busy = GaugeMetricFamily(
            "keel_deployment_in_flight_requests",
            "Requests a deployment is serving now (streams until they end).",
            labels=["model", "deployment"],
        )
        latency = GaugeMetricFamily(
            "keel_deployment_latency_seconds",
            "A deployment's recent latency (moving average) as routing sees it.",
            labels=["model", "deployment"],
        )
        for group in self._metrics._router.groups():
            for deployment in group.deployments:
                health = deployment.health
                health.available()  # moves an expired open circuit to half-open
                for state in _CIRCUIT_STATES:
                    value = 1 if health.state == state else 0
                    circuit.add_metric([group.id, deployment.id, state], value)
                busy.add_metric([group.id, deployment.id], health.in_flight)
                if health.latency_s is not None:
                    latency.add_metric([group.id, deployment.id], health.latency_s)
        yield circuit
        yield busy
        yield latency

    def _writers(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "keel_record_queue_depth",
            "Items queued for a batched database writer, not yet written.",
            labels=["writer"],
        )
        written = CounterMetricFamily(
            "keel_records_written",
            "Items a batched writer stored (writer=audit: audit log entries).",
            labels=["writer"],
        )
        dropped = CounterMetricFamily(
            "keel_records_dropped",
            "Items a batched writer dropped because the database refused them; should be 0.",
            labels=["writer"],
        )
        failures = CounterMetricFamily(
            "keel_record_write_failures",
            "Batch writes that failed and were retried (the database unreachable, say).",
            labels=["writer"],
        )
        for name, writer in self._metrics._writers.items():
            depth.add_metric([name], writer.pending)
            written.add_metric([name], writer.written)
            dropped.add_metric([name], writer.dropped)
            failures.add_metric([name], writer.write_failures)
        yield depth
        yield written
        yield dropped
        yield failures

    def _caches(self) -> Iterator[Metric]:
        caching = self._metrics._caching
        stats: dict[str, Any] = caching.stats() if caching is not None else {"enabled": False}
        if not stats["enabled"]:
            return
        hits = CounterMetricFamily(
            "keel_cache_hits",
            "Response cache hits, by cache and tier.",
            labels=["cache", "tier"],
        )
        misses = CounterMetricFamily(
            "keel_cache_misses", "Response cache misses, by cache.", labels=["cache"]
        )
        stores = CounterMetricFamily(
            "keel_cache_stores", "Responses stored in the cache.", labels=["cache"]
        )
        exact = stats["exact"]
        hits.add_metric(["exact", "memory"], exact["memory_hits"])
        hits.add_metric(["exact", "second_tier"], exact["second_tier_hits"])
        misses.add_metric(["exact"], exact["misses"])
        stores.add_metric(["exact"], exact["stores"])
        entries = GaugeMetricFamily(
            "keel_cache_entries", "Entries in the exact cache's memory tier."
        )
        entries.add_metric([], exact["entries_in_memory"])
        semantic = stats["semantic"]
        refused = CounterMetricFamily(
            "keel_cache_semantic_refusals",
            "Similar-enough cached answers the semantic cache's precision guard refused.",
            labels=["reason"],
        )
        if semantic is not None:
            hits.add_metric(["semantic", ""], semantic["hits"])
            misses.add_metric(["semantic"], semantic["misses"])
            stores.add_metric(["semantic"], semantic["stores"])
            for reason, count in sorted(semantic["refused"].items()):
                refused.add_metric([reason], count)
        yield hits
        yield misses
        yield stores
        yield entries
        yield refused
