"""A finished gateway call as a span tree, following the OpenTelemetry GenAI semantic
conventions: a SERVER root `{operation} {model}` for the call, one CLIENT span per attempt
(`{operation} {upstream model}`), and INTERNAL spans for the steps Keel timed on the way (cache
lookup, guardrails, quota check).

Built in the span writer's thread from the times the call recorded, never on the request path.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from keel.errors import GuardrailError, KeelError, QuotaExceededError, QuotaUnavailableError
from keel.monitoring.spans import Span, SpanTree, wall_ns

if TYPE_CHECKING:
    from keel.gateway.call import Call
    from keel.providers import Provider
    from keel.routing.executor import Attempt

__all__ = ["call_spans"]

Mask = Callable[[str], str]

_OPERATIONS = {
    "chat.completions": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
}
# Keel's provider names as the conventions' well-known values; others go as they are.
_PROVIDERS = {
    "openai": "openai",
    "azure": "azure.ai.openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "cohere": "cohere",
}
_REQUEST_PARAMETERS = {
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "top_k": "gen_ai.request.top_k",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "seed": "gen_ai.request.seed",
    "n": "gen_ai.request.choice.count",
    "dimensions": "gen_ai.embeddings.dimension.count",
}
_PHASE_FAILURES: dict[str, tuple[type[KeelError], ...]] = {
    "guardrails.input": (GuardrailError,),
    "guardrails.output": (GuardrailError,),
    "quota.reserve": (QuotaExceededError, QuotaUnavailableError),
}


def call_spans(
    call: Call, record: dict[str, Any], *, mask: Mask, capture_content: bool = False
) -> SpanTree:
    """The span tree of a finished call; with `capture_content`, its messages too, each text
    through `mask`. Status messages are left for the caller to mask (`Tracing` does)."""
    operation = _OPERATIONS.get(call.endpoint, call.endpoint)
    origin = wall_ns(call.created_at)

    def at(clock: float) -> int:
        return origin + int((clock - call.created_clock) * 1e9)

    model = call.model_requested
    tree = SpanTree(
        f"{operation} {model}" if model else operation,
        start_ns=at(call.started),
        kind="server",
        parent=call.trace_context,
        request_id=call.request_id,
    )
    root = tree.root
    provider = call.provider
    root.set(
        **{
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": model,
            "gen_ai.provider.name": _provider_name(provider) if provider else None,
            "keel.request_id": call.request_id,
            "keel.endpoint": call.endpoint,
            "keel.group": call.group,
            "keel.deployment": record.get("deployment"),
            "keel.registry_version": call.registry_version,
            "keel.attempts": call.trace.attempts,
            "keel.cache": call.cache_status,
            "keel.cost_usd": call.cost_usd,
            "keel.overhead_ms": _rounded(record.get("overhead_ms")),
            "http.response.status_code": call.status_code,
        }
    )
    _request_attributes(root, call)
    _response_attributes(root, call)
    if call.stream and call.first_token_at is not None:
        root.set(**{"gen_ai.response.time_to_first_chunk": call.first_token_at - call.started})
    if call.error is not None:
        root.fail(call.error.message, call.error.error_type)
    elif call.status_code >= 400:
        root.fail("the client closed the request", "client_closed_request")
    if capture_content:
        _content(root, call, mask)

    finished = at(call.finished_at) if call.finished_at is not None else wall_ns()
    _phases(tree, call, record, at)
    _attempts(tree, call, operation, at, finished)
    return tree.finish(end_ns=finished)


def _phases(tree: SpanTree, call: Call, record: dict[str, Any], at: Callable[[float], int]) -> None:
    decisions = record.get("guardrails") or []
    last = len(call.phases) - 1
    for index, (name, started, ended, attributes) in enumerate(call.phases):
        span = tree.add(f"keel.{name}", start_ns=at(started), end_ns=at(ended))
        if attributes:
            span.set(**attributes)
        if name.startswith("guardrails."):
            stage = name.removeprefix("guardrails.")
            staged = [d for d in decisions if d.get("stage") == stage]
            span.set(
                **{
                    "keel.guardrails.stage": stage,
                    "keel.guardrails.decisions": staged or None,
                    "keel.guardrails.rules": [str(d.get("rule")) for d in staged] or None,
                }
            )
        elif name == "cache.lookup":
            plan = call.cache_plan
            span.set(
                **{
                    "keel.cache.result": call.cache_status,
                    "keel.cache.semantic": plan.semantic if plan is not None else None,
                    "keel.cache.guard_refusal": plan.guard_refusal if plan is not None else None,
                }
            )
        elif name == "quota.reserve" and call.estimate is not None:
            span.set(
                **{
                    "keel.quota.estimated_tokens": call.estimate.tokens,
                    "keel.quota.estimated_usd": call.estimate.usd,
                }
            )
        # The step the call stopped at: the last one, when the error is of its kind.
        error = call.error
        if index == last and error is not None and isinstance(error, _PHASE_FAILURES.get(name, ())):
            blocked = getattr(error, "rule", None)
            span.set(**{"keel.guardrails.blocked": blocked})
            span.fail(error.message, error.code or error.error_type)


def _attempts(
    tree: SpanTree,
    call: Call,
    operation: str,
    at: Callable[[float], int],
    finished: int,
) -> None:
    timeline: list[Attempt] = call.trace.timeline
    for number, attempt in enumerate(timeline, start=1):
        provider = attempt.deployment.provider
        answered = attempt.outcome == "ok"
        # A stream's attempt returns at the first chunk; the upstream answers until the end.
        end = finished if answered and call.stream else at(attempt.ended)
        span = tree.add(
            f"{operation} {provider.upstream_model}",
            start_ns=at(attempt.started),
            end_ns=end,
            kind="client",
        )
        span.set(
            **{
                "gen_ai.operation.name": operation,
                "gen_ai.provider.name": _provider_name(provider),
                "gen_ai.request.model": provider.upstream_model,
                "keel.deployment": attempt.deployment.id,
                "keel.group": attempt.group or None,
                "keel.attempt": number,
                "keel.outcome": attempt.outcome,
            }
        )
        _server(span, provider)
        if answered:
            _response_attributes(span, call)
            if call.stream:
                first_chunk_s = attempt.ended - attempt.started
                span.set(**{"gen_ai.response.time_to_first_chunk": first_chunk_s})
        elif attempt.error is not None:
            span.fail(attempt.error.message, attempt.outcome)
        else:
            span.fail(attempt.outcome, attempt.outcome)


def _request_attributes(span: Span, call: Call) -> None:
    request = call.request
    if request is None:
        return
    values = {name: getattr(request, name, None) for name in _REQUEST_PARAMETERS}
    span.set(**{_REQUEST_PARAMETERS[name]: value for name, value in values.items()})
    max_tokens = getattr(request, "max_completion_tokens", None) or getattr(
        request, "max_tokens", None
    )
    stop = getattr(request, "stop", None)
    encoding = getattr(request, "encoding_format", None)
    span.set(
        **{
            "gen_ai.request.max_tokens": max_tokens,
            "gen_ai.request.stop_sequences": [stop] if isinstance(stop, str) else stop,
            "gen_ai.request.encoding_formats": [encoding] if encoding else None,
            "gen_ai.request.stream": True if call.stream else None,
        }
    )


def _response_attributes(span: Span, call: Call) -> None:
    response = call.response or {}
    reasons = call.finish_reasons or [
        str(choice["finish_reason"])
        for choice in response.get("choices") or []
        if isinstance(choice, dict) and choice.get("finish_reason")
    ]
    usage = call.usage
    span.set(
        **{
            "gen_ai.response.model": response.get("model") or call.response_model,
            "gen_ai.response.id": response.get("id"),
            "gen_ai.response.finish_reasons": reasons or None,
            "gen_ai.usage.input_tokens": usage.prompt_tokens if usage else None,
            "gen_ai.usage.output_tokens": usage.completion_tokens if usage else None,
            "gen_ai.usage.cache_read.input_tokens": usage.cached_tokens or None if usage else None,
            "gen_ai.usage.reasoning.output_tokens": (
                usage.reasoning_tokens or None if usage else None
            ),
        }
    )


def _server(span: Span, provider: Provider) -> None:
    base = provider.config.api_base
    if not base:
        return
    try:
        parts = urlsplit(base)
        port = parts.port
    except ValueError:
        return
    span.set(**{"server.address": parts.hostname, "server.port": port})


def _provider_name(provider: Provider) -> str:
    return _PROVIDERS.get(provider.name, provider.name)


def _rounded(value: Any) -> float | None:
    return round(value, 3) if isinstance(value, float) else None


# -- content, only when opted in ------------------------------------------------------------


def _content(span: Span, call: Call, mask: Mask) -> None:
    """The conversation in the conventions' message format, every text masked."""
    request = call.request
    if request is None:
        return
    if call.endpoint == "chat.completions":
        messages = [
            message if isinstance(message, dict) else message.model_dump(exclude_none=True)
            for message in getattr(request, "messages", None) or []
        ]
        inputs = [_message(message, mask) for message in messages]
    elif call.endpoint == "completions":
        prompt = getattr(request, "prompt", None)
        prompts = [prompt] if isinstance(prompt, str) else prompt or []
        inputs = [
            {"role": "user", "parts": [{"type": "text", "content": mask(text)}]}
            for text in prompts
            if isinstance(text, str)
        ]
    else:
        return  # embeddings: the conventions define no message content for them
    span.set(**{"gen_ai.input.messages": json.dumps(inputs, ensure_ascii=False)})
    outputs = [
        _output(choice, mask)
        for choice in (call.response or {}).get("choices") or []
        if isinstance(choice, dict)
    ]
    if outputs:
        span.set(**{"gen_ai.output.messages": json.dumps(outputs, ensure_ascii=False)})


def _message(message: dict[str, Any], mask: Mask) -> dict[str, Any]:
    parts = _parts(message.get("content"), mask)
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        parts.append(
            {
                "type": "tool_call",
                "id": call.get("id"),
                "name": function.get("name"),
                "arguments": mask(str(function.get("arguments") or "")),
            }
        )
    role = message.get("role")
    if role == "tool":
        return {
            "role": "tool",
            "parts": [
                {
                    "type": "tool_call_response",
                    "id": message.get("tool_call_id"),
                    "response": " ".join(p.get("content", "") for p in parts),
                }
            ],
        }
    return {"role": role, "parts": parts}


def _output(choice: dict[str, Any], mask: Mask) -> dict[str, Any]:
    message = choice.get("message")
    if isinstance(message, dict):
        shaped = _message(message, mask)
    else:  # a text completion
        shaped = {"role": "assistant", "parts": _parts(choice.get("text"), mask)}
    shaped["finish_reason"] = choice.get("finish_reason")
    return shaped


def _parts(content: Any, mask: Mask) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "content": mask(content)}]
    parts: list[dict[str, Any]] = []
    for item in content or []:
        if isinstance(item, dict) and item.get("type") == "text":
            parts.append({"type": "text", "content": mask(str(item.get("text") or ""))})
        elif isinstance(item, dict):
            parts.append({"type": str(item.get("type"))})  # images, audio: their kind only
    return parts
