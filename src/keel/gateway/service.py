"""The request path. Every inference call goes through `Gateway`, and reads in the order things
happen: parse → admit the caller to the model → route (registry, residency) → screen the input
(guardrails, PII) → reserve quota → cache → call upstream → screen the output → account →
settle quota → record and audit → respond. The caller was authenticated before it got here.

Nothing here waits on the database: records and audit entries go to batched writers, and every
policy reads an in-memory snapshot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from keel.cache import assemble, replay, take_cache_field
from keel.errors import InternalError, InvalidRequestError, KeelError, UpstreamBadResponseError
from keel.gateway.caching import CachePlan, ResponseCaching
from keel.gateway.call import CLIENT_CLOSED_REQUEST, Call
from keel.gateway.legacy import chat_request_for, text_chunks, text_completion_for
from keel.gateway.metering import Metering
from keel.gateway.pricing import PriceTable, Usage
from keel.gateway.screening import StreamScreen
from keel.gateway.sse import DONE, encode_error, encode_event
from keel.monitoring.trace_context import continue_trace
from keel.providers.exchange import Exchange, current_exchange
from keel.registry.enforce import enforce_card_limits
from keel.request_parsing import parse_request
from keel.routing import failure_kind
from keel.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

if TYPE_CHECKING:
    from keel.governance.audit import AuditLog
    from keel.governance.guardrails import Guardrails
    from keel.governance.policy import RequestPolicy
    from keel.governance.quotas import Quotas
    from keel.providers import Provider
    from keel.registry.view import RegistryView
    from keel.routing import Capability, ModelGroup, Router
    from keel.store import RequestRecorder

__all__ = ["BodySource", "CallObserver", "Gateway", "Governance", "Reply"]

log = logging.getLogger("keel.gateway")
RequestT = TypeVar("RequestT", bound=BaseModel)
T = TypeVar("T")
Opened = tuple[dict[str, Any], AsyncIterator[dict[str, Any]]]


@dataclass(slots=True)
class Governance:
    """What the request path consults besides routing; each part is optional."""

    policy: RequestPolicy | None = None
    quotas: Quotas | None = None
    guardrails: Guardrails | None = None
    audit: AuditLog | None = None


BodySource = Callable[[], Awaitable[bytes]]
# Told of every finished call with its record, on the request path's thread but after the
# response is settled: an observer must only hand the call on (update counters, queue spans),
# never wait.
CallObserver = Callable[[Call, dict[str, Any]], None]


@dataclass(slots=True)
class Reply:
    headers: dict[str, str]
    body: dict[str, Any] | None = None
    stream: AsyncIterator[bytes] | None = None
    # For a stream: what the server calls once the response is over. If the client left
    # before the stream was ever read, the relay never ran, and this finishes the call instead.
    done: Callable[[], None] | None = None


class Gateway:
    def __init__(
        self,
        router: Router,
        recorder: RequestRecorder,
        prices: PriceTable,
        caching: ResponseCaching | None = None,
        registry: RegistryView | None = None,
        governance: Governance | None = None,
        observers: tuple[CallObserver, ...] = (),
    ) -> None:
        self.router = router
        self.observers = observers
        self.recorder = recorder
        self.prices = prices
        self.caching = caching or ResponseCaching(None)
        self.registry = registry
        self.governance = governance or Governance()
        self.metering = Metering(self.governance.policy, self.governance.quotas)
        # Set by the tracing part when it starts: every call then continues the caller's trace
        # (or starts one) and names it in its response headers.
        self.tracing = False

    async def chat_completions(self, body: BodySource, call: Call) -> Reply:
        async with self._recorded(call):
            request = await self._parse(ChatCompletionRequest, body, call)
            cache_control = self.caching.control(request, call.request_headers)
            group = self._route(call, request, "chat")
            await self._screen_input(call, request, group)
            await self._reserve(call, request, group)
            call.cache_plan = self._cache_plan(call, group, request, cache_control)
            if call.cache_plan is not None:
                started = time.perf_counter()
                cached = await self.caching.lookup(call.cache_plan)
                call.cache_status = "miss" if cached is None else "hit"
                call.phase("cache.lookup", started)
                if cached is not None:
                    return await self._serve_cached(call, cached, request)
            if request.stream:

                def open_stream(provider: Provider) -> Awaitable[Opened]:
                    provider.check_chat_request(request)
                    return _first_chunk(provider.chat_stream(request))

                opened = await self._attempt(call, group, open_stream, request, stream=True)
                return self._stream_reply(call, opened, request.wants_usage_chunk())

            def complete(provider: Provider) -> Awaitable[dict[str, Any]]:
                provider.check_chat_request(request)
                return provider.chat(request)

            response = await self._attempt(call, group, complete, request)
            self._account(call, response.get("usage"))  # paid, whatever the guardrails say
            await self._screen_output(call, response)
            self.caching.store(call.cache_plan, response)
            return self._reply(call, response)

    async def completions(self, body: BodySource, call: Call) -> Reply:
        async with self._recorded(call):
            request = await self._parse(CompletionRequest, body, call)
            take_cache_field(request)  # only chat completions are cached; never forward it
            group = self._route(call, request, "completions")
            await self._screen_input(call, request, group)
            await self._reserve(call, request, group)
            wants_usage = bool(request.stream_options and request.stream_options.include_usage)
            if request.stream:

                def open_stream(provider: Provider) -> Awaitable[Opened]:
                    if provider.supports_completions:
                        return _first_chunk(provider.complete_stream(request))
                    chat_request = chat_request_for(request)
                    provider.check_chat_request(chat_request)
                    return _first_chunk(text_chunks(provider.chat_stream(chat_request)))

                opened = await self._attempt(call, group, open_stream, request, stream=True)
                return self._stream_reply(call, opened, wants_usage)

            async def complete(provider: Provider) -> dict[str, Any]:
                if provider.supports_completions:
                    return await provider.complete(request)
                chat_request = chat_request_for(request)
                provider.check_chat_request(chat_request)
                return text_completion_for(await provider.chat(chat_request))

            response = await self._attempt(call, group, complete, request)
            self._account(call, response.get("usage"))
            await self._screen_output(call, response)
            return self._reply(call, response)

    async def embeddings(self, body: BodySource, call: Call) -> Reply:
        async with self._recorded(call):
            request = await self._parse(EmbeddingRequest, body, call)
            take_cache_field(request)
            group = self._route(call, request, "embeddings")
            await self._screen_input(call, request, group)
            await self._reserve(call, request, group)
            response = await self._attempt(
                call, group, lambda provider: provider.embed(request), request
            )
            self._account(call, response.get("usage"))
            return self._reply(call, response)

    # -- the steps -------------------------------------------------------------------------

    async def _parse(self, schema: type[RequestT], body: BodySource, call: Call) -> RequestT:
        request = parse_request(schema, await body())
        call.request = request
        call.model_requested = getattr(request, "model", None)
        call.stream = bool(getattr(request, "stream", False))
        return request

    def _route(
        self,
        call: Call,
        request: ChatCompletionRequest | CompletionRequest | EmbeddingRequest,
        capability: Capability,
    ) -> ModelGroup:
        """The group serving `request.model`: a gateway model id, or a registry reference
        (`name`, `name@alias`, `name@3`) whose card's constraints the request must meet; the
        caller must be allowed that model, and its data that group's regions."""
        model = request.model
        policy = self.governance.policy
        if policy is not None and call.actor is not None:
            policy.admit_model(call.actor, model)
        if self.registry is not None and not self.router.has(model):
            resolved = self.registry.resolve(model)
            if resolved is not None:
                if policy is not None and call.actor is not None:
                    policy.admit_stage(call.actor, resolved)
                enforce_card_limits(resolved, request)
                if resolved.gateway_model is None:
                    raise InvalidRequestError(
                        f"registry model {resolved.name}@{resolved.version} is not bound to a "
                        "gateway model (set gateway_model in its card)",
                        param="model",
                    )
                call.registry_version = f"{resolved.name}@{resolved.version}"
                call.resolved = resolved
                model = resolved.gateway_model
        group = self.router.resolve(model, capability)
        call.group = group.id
        if policy is not None and call.actor is not None:
            call.residency = policy.residency_for(call.actor)
            if call.residency is not None:
                policy.check_residency(call.residency, group, self.router)
        return group

    async def _screen_input(self, call: Call, request: BaseModel, group: ModelGroup) -> None:
        guardrails = self.governance.guardrails
        if guardrails is None or not guardrails.active:
            return
        # Fallbacks count: a prompt screened as "local" must not reach a remote fallback.
        external = any(
            not d.provider.is_local
            for chained in self.router.chain(group)
            for d in chained.deployments
        )
        actor = call.actor
        started = time.perf_counter()
        try:
            call.screening = await guardrails.screen_request(
                request, team=actor.team if actor else None, model=group.id, external=external
            )
        finally:
            call.phase("guardrails.input", started)

    async def _screen_output(self, call: Call, response: dict[str, Any]) -> None:
        guardrails = self.governance.guardrails
        if guardrails is not None and call.screening is not None:
            started = time.perf_counter()
            try:
                await guardrails.screen_response(call.screening, response)
            finally:
                call.phase("guardrails.output", started)

    async def _reserve(self, call: Call, request: BaseModel, group: ModelGroup) -> None:
        started = time.perf_counter()
        try:
            await self.metering.reserve(call, request, group)
        finally:
            if call.estimate is not None:  # the caller had limits: quotas were consulted
                call.phase("quota.reserve", started)

    def _cache_plan(
        self, call: Call, group: ModelGroup, request: ChatCompletionRequest, control: Any
    ) -> CachePlan | None:
        if call.screening is not None and call.screening.pseudonyms:
            # The answer holds this caller's restored values: never store or share it.
            return None
        return self.caching.plan(group, request, control, call.caller)

    async def _attempt(
        self,
        call: Call,
        group: ModelGroup,
        invoke: Callable[[Provider], Awaitable[T]],
        request: BaseModel,
        *,
        stream: bool = False,
    ) -> T:
        """Call upstream through the router's retries and fallbacks, timing the upstream part.
        A stream keeps its deployment's in-flight slot until `_relay` ends it."""
        started = time.perf_counter()
        exchange = Exchange(client_headers=call.request_headers)
        # Read by the HTTP layer beneath the providers (see keel.providers.exchange).
        current_exchange.set(exchange)
        try:
            regions = call.residency.regions if call.residency is not None else None
            answer = await self.router.execute(
                group,
                invoke,
                call.trace,
                hold=stream,
                regions=regions,
                enter_fallback=self.metering.fallback_entry(call, request),
            )
            call.answered = True
            call.upstream_headers = _relayed(exchange.response_headers, group, call)
            return answer
        finally:
            call.upstream_s += time.perf_counter() - started

    def _account(self, call: Call, usage: dict[str, Any] | None) -> None:
        call.usage = Usage.from_openai(usage)
        if call.cache_status == "hit":
            call.cost_usd = 0.0
            return
        provider = call.provider
        if provider is None or call.usage is None:
            return
        if call.trace.deployment is not None:
            call.trace.deployment.health.used_tokens(
                call.usage.prompt_tokens + call.usage.completion_tokens
            )
        if provider.is_local:
            call.cost_usd = 0.0
            return
        price = self.prices.price_for(provider.config.id, provider.upstream_model)
        if price is not None:
            call.cost_usd = self.prices.cost(price, call.usage)

    def _reply(self, call: Call, response: dict[str, Any]) -> Reply:
        call.response = response
        return Reply(headers=call.headers(), body=response)

    async def _serve_cached(
        self, call: Call, cached: dict[str, Any], request: ChatCompletionRequest
    ) -> Reply:
        """A cache hit: no provider was called, so nothing is paid."""
        if request.stream:
            opened = await _first_chunk(_iterate(replay(cached)))
            return self._stream_reply(call, opened, request.wants_usage_chunk())
        self._account(call, cached.get("usage"))
        return self._reply(call, cached)

    # -- streaming -------------------------------------------------------------------------

    def _stream_reply(self, call: Call, opened: Opened, include_usage: bool) -> Reply:
        """The first chunk is in hand, so failures up to here got a real HTTP status; from here
        on a failure becomes an error event at the end of the stream."""
        first, rest = opened
        call.stream = True
        call.response_model = first.get("model")
        call.stream_overhead_ms = call.overhead_ms()
        reply = Reply(headers=call.headers())
        relay = self._relay(call, first, rest, include_usage)
        reply.stream = relay
        reply.done = lambda: self._response_over(call, relay, rest)
        return reply

    async def _relay(
        self,
        call: Call,
        first: dict[str, Any],
        rest: AsyncIterator[dict[str, Any]],
        include_usage: bool,
    ) -> AsyncGenerator[bytes, None]:
        call.relaying = True
        usage: dict[str, Any] | None = None
        content_chunks = 0
        completed = False
        storing = call.cache_plan is not None and call.cache_status != "hit"
        relayed: list[dict[str, Any]] = []
        screen = StreamScreen.open(self.governance.guardrails, call)
        try:
            chunk: dict[str, Any] | None = first
            while chunk is not None:
                if screen is not None:
                    screen.restore(chunk)
                if storing:
                    relayed.append(dict(chunk))
                if "usage" in chunk:
                    usage = chunk["usage"] or usage
                    if not include_usage:
                        del chunk["usage"]
                if chunk.get("choices"):
                    if _carries_output(chunk):
                        content_chunks += 1
                        if call.first_token_at is None:
                            call.first_token_at = time.perf_counter()
                    else:
                        _note_finish(call, chunk)
                    yield encode_event(chunk)
                elif include_usage and "usage" in chunk:
                    yield encode_event(chunk)
                chunk = await anext(rest, None)
            if screen is not None:
                tail = screen.finish()
                if tail is not None:
                    if storing:
                        relayed.append(dict(tail))
                    yield encode_event(tail)
                started = time.perf_counter()
                try:
                    await screen.check_output()
                finally:
                    call.phase("guardrails.output", started)
            completed = True
            if storing:
                self.caching.store(call.cache_plan, assemble(relayed))
            yield DONE
        except KeelError as exc:
            call.fail(exc)
            yield encode_error(exc)
        except Exception as exc:
            # Providers raise Keel's errors for whatever an upstream does; anything else is
            # Keel's own failure, never held against the deployment.
            log.exception("stream %s failed", call.request_id)
            error = InternalError(f"Keel failed while relaying the stream ({type(exc).__name__})")
            call.fail(error)
            yield encode_error(error)
        finally:
            if not completed and call.error is None:
                call.status_code = CLIENT_CLOSED_REQUEST
            self._end_stream(call)
            if usage is None and content_chunks:
                # The stream stopped before the provider reported usage. Providers stream about
                # one token per chunk, so the chunks relayed are the best count of what was paid.
                usage = {"completion_tokens": content_chunks}
            try:
                close = getattr(rest, "aclose", None)
                if close is not None:
                    # Stops the upstream read or the local generation the client no longer wants.
                    await close()
                self._account(call, usage)
            except Exception:
                log.exception("finishing stream %s failed", call.request_id)
            finally:
                self._finish(call)

    def _response_over(
        self, call: Call, relay: AsyncGenerator[bytes, None], rest: AsyncIterator[dict[str, Any]]
    ) -> None:
        """The server is done with the response. A relay that started but never reached its end
        (some servers drop a disconnected stream without closing it) is closed, which runs its
        `finally`; one that never started (the client left first) is finished here: the
        deployment freed, the upstream stream stopped, the call recorded as abandoned."""
        if call.relaying:
            if call.finished_at is None:
                closing = asyncio.get_running_loop().create_task(relay.aclose())
                closing.add_done_callback(_log_failure)
            return
        call.relaying = True
        call.status_code = CLIENT_CLOSED_REQUEST
        self._end_stream(call)
        close = getattr(rest, "aclose", None)
        if close is not None:
            closing = asyncio.get_running_loop().create_task(close())
            closing.add_done_callback(_log_failure)
        self._finish(call)

    def _end_stream(self, call: Call) -> None:
        deployment = call.trace.deployment
        if deployment is None:
            return
        failure = failure_kind(call.error) if call.error is not None else None
        # A probe's slot was handed back at the first chunk, when the deployment answered.
        deployment.health.stream_ended(failure)

    # -- recording -------------------------------------------------------------------------

    @asynccontextmanager
    async def _recorded(self, call: Call) -> AsyncIterator[None]:
        """Finish the call exactly once: here, unless a stream took over the finishing."""
        if self.tracing:
            # The request id's random hex doubles as the trace id of a trace Keel starts.
            call.trace_context = continue_trace(call.request_headers, call.request_id[4:])
        try:
            yield
        except KeelError as exc:
            call.fail(exc)
            self._finish(call)
            raise
        except Exception:
            call.status_code = 500
            self._finish(call)
            raise
        except BaseException:
            # Cancelled (the client went away, or a shutdown ran out of grace): still one record.
            call.status_code = CLIENT_CLOSED_REQUEST
            self._finish(call)
            raise
        if not call.stream:
            self._finish(call)

    def _finish(self, call: Call) -> None:
        """Settle the quota reservation, then write the record and the audit entry; all of it
        off the request path."""
        self.metering.settle(call)
        record = call.record()
        self.recorder.add(record)
        for observe in self.observers:
            try:
                observe(call, record)
            except Exception:
                log.exception("call observer %r failed", observe)
        audit = self.governance.audit
        if audit is not None:
            audit.record(
                f"inference.{call.endpoint}",
                actor=call.actor,
                target=call.registry_version or call.group or call.model_requested,
                outcome=str(call.status_code),
                request_id=call.request_id,
                detail=_audit_detail(record),
            )

    async def drain(self) -> None:
        """Wait for the quota settlements still running (at shutdown)."""
        await self.metering.drain()


def _relayed(headers: dict[str, str], group: ModelGroup, call: Call) -> dict[str, str]:
    """The upstream's request id always; its rate-limit state only when the one deployment
    of the requested model answered, since only then does it describe what the client uses."""
    if call.trace.group == group.id and len(group.deployments) == 1:
        return headers
    return {name: value for name, value in headers.items() if name == "x-request-id"}


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("closing an unfinished stream failed: %r", task.exception())


def _audit_detail(record: dict[str, Any]) -> dict[str, Any]:
    """The call's metadata for the audit log: never its content."""
    return {
        name: record[name]
        for name in (
            "deployment",
            "stream",
            "prompt_tokens",
            "completion_tokens",
            "cost_usd",
            "cache",
            "error_type",
            "guardrails",
            "latency_ms",
        )
        if record.get(name) is not None
    }


async def _iterate(chunks: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for chunk in chunks:
        yield chunk


async def _first_chunk(chunks: AsyncIterator[dict[str, Any]]) -> Opened:
    iterator = aiter(chunks)
    try:
        first = await anext(iterator)
    except StopAsyncIteration:
        raise UpstreamBadResponseError("the stream ended before its first chunk") from None
    return first, iterator


def _note_finish(call: Call, chunk: dict[str, Any]) -> None:
    """A chunk without output usually closes a choice: its finish reason goes on the trace."""
    for choice in chunk["choices"]:
        reason = choice.get("finish_reason")
        if reason:
            call.finish_reasons.append(reason)


def _carries_output(chunk: dict[str, Any]) -> bool:
    for choice in chunk["choices"]:
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("tool_calls") or choice.get("text"):
            return True
    return False
