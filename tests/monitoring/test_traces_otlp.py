"""OTLP export to loopback receivers the tests run: an HTTP one decoding
`ExportTraceServiceRequest` at /v1/traces, and a gRPC TraceService; and collectors that hang or
are down, which must never fail or hold up a request."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.conftest import running_app
from tests.fakes.openai import FakeOpenAI
from tests.fakes.server import free_port, serve_on_loopback
from tests.monitoring.test_traces import chat, settings_for

ExportRequest = trace_service_pb2.ExportTraceServiceRequest
# OTLP's span kinds (opentelemetry/proto/trace/v1/trace.proto).
SERVER, CLIENT, INTERNAL = 2, 3, 1


class Received:
    """What a receiver was sent, across both transports."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()

    def add(self, request: Any, headers: dict[str, str]) -> None:
        with self.lock:
            self.requests.append(request)
            self.headers.append(headers)

    def spans(self) -> list[tuple[dict[str, Any], Any, Any]]:
        """(resource attributes, scope, span) for every span received."""
        found: list[tuple[dict[str, Any], Any, Any]] = []
        with self.lock:
            for request in self.requests:
                for resource_spans in request.resource_spans:
                    resource = _attributes(resource_spans.resource.attributes)
                    for scope_spans in resource_spans.scope_spans:
                        found.extend(
                            (resource, scope_spans.scope, span) for span in scope_spans.spans
                        )
        return found


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    return getattr(value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def http_receiver(received: Received, hang_s: float = 0.0) -> Any:
    async def traces(request: Request) -> Response:
        if hang_s:
            await asyncio.sleep(hang_s)
        message = ExportRequest()
        message.ParseFromString(await request.body())
        received.add(message, dict(request.headers))
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        return Response(reply, media_type="application/x-protobuf")

    return Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, received: Received) -> None:
        self.received = received

    def Export(self, request: Any, context: Any) -> Any:
        self.received.add(request, dict(context.invocation_metadata()))
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def grpc_receiver() -> Iterator[tuple[Received, int]]:
    received = Received()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        _TraceService(received), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield received, port
    finally:
        server.stop(grace=None)


async def exported(app: Any) -> None:
    """Until what Keel handled so far has been handed to the collector."""
    tracing = app.state.keel.tracing
    await tracing.flush()
    assert await asyncio.to_thread(tracing.exporter.flush)


def check_gen_ai_spans(received: Received, request_id: str, trace_id: str) -> None:
    spans = [
        (resource, scope, span)
        for resource, scope, span in received.spans()
        if span.trace_id.hex() == trace_id
    ]
    assert spans, "no span of the call reached the collector"
    resource, scope = spans[0][0], spans[0][1]
    assert resource["service.name"] == "keel"
    assert scope.name == "keel.gateway"
    by_kind = {span.kind: span for _, _, span in spans}
    root, attempt = by_kind[SERVER], by_kind[CLIENT]
    assert (root.name, attempt.name) == ("chat gpt-test", "chat up-model")
    assert attempt.parent_span_id == root.span_id
    assert root.parent_span_id == b""
    attributes = _attributes(root.attributes)
    # "hello there": two words in, "Echo: hello there" three words out.
    expected = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-test",
        "gen_ai.response.model": "up-model",
        "gen_ai.usage.input_tokens": 2,
        "gen_ai.usage.output_tokens": 3,
        "gen_ai.response.finish_reasons": ["stop"],
        "gen_ai.request.temperature": 0.5,
        "keel.request_id": request_id,
    }
    assert {name: attributes.get(name) for name in expected} == expected
    assert _attributes(attempt.attributes)["gen_ai.request.model"] == "up-model"
    assert root.start_time_unix_nano <= attempt.start_time_unix_nano
    assert attempt.end_time_unix_nano <= root.end_time_unix_nano


async def test_spans_are_exported_over_otlp_http(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    received = Received()
    with serve_on_loopback(http_receiver(received)) as collector:
        otlp = {
            "endpoint": f"{collector}/v1/traces",
            "headers": {"x-collector-key": "secret-collector-key"},
        }
        settings = settings_for(keel_home, fake_openai_url, tracing={"otlp": otlp})
        async with running_app(settings) as (app, client):
            response = await client.post("/v1/chat/completions", json=chat(temperature=0.5))
            assert response.status_code == 200
            await exported(app)
    check_gen_ai_spans(
        received, response.headers["x-keel-request-id"], response.headers["x-keel-trace-id"]
    )
    assert received.headers[0]["x-collector-key"] == "secret-collector-key"
    assert received.headers[0]["content-type"] == "application/x-protobuf"


async def test_spans_are_exported_over_otlp_grpc(
    keel_home: Path,
    fake_openai: FakeOpenAI,
    fake_openai_url: str,
    grpc_receiver: tuple[Received, int],
) -> None:
    received, port = grpc_receiver
    otlp = {"endpoint": f"http://127.0.0.1:{port}", "protocol": "grpc"}
    settings = settings_for(keel_home, fake_openai_url, tracing={"otlp": otlp, "enabled": False})
    async with running_app(settings) as (app, client):
        response = await client.post("/v1/chat/completions", json=chat(temperature=0.5))
        assert response.status_code == 200
        await exported(app)
        # Exported only: nothing kept, and the trace view says why.
        await app.state.keel.recorder.flush()
        view = await client.get(f"/v1/keel/requests/{response.headers['x-keel-request-id']}/trace")
        assert view.status_code == 404
    check_gen_ai_spans(
        received, response.headers["x-keel-request-id"], response.headers["x-keel-trace-id"]
    )


async def test_a_caller_that_is_not_sampled_is_not_exported_but_kept(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    received = Received()
    with serve_on_loopback(http_receiver(received)) as collector:
        otlp = {"endpoint": f"{collector}/v1/traces"}
        settings = settings_for(keel_home, fake_openai_url, tracing={"otlp": otlp})
        async with running_app(settings) as (app, client):
            trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
            unsampled = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-00"}
            quiet = await client.post("/v1/chat/completions", json=chat(), headers=unsampled)
            loud = await client.post("/v1/chat/completions", json=chat(temperature=0.5))
            await exported(app)
            await app.state.keel.recorder.flush()
            kept = await client.get(f"/v1/keel/requests/{request_id_of(quiet)}/trace")
            assert kept.status_code == 200 and kept.json()["trace_id"] == trace_id
    assert quiet.headers["traceparent"].endswith("-00")
    traces = {span.trace_id.hex() for _, _, span in received.spans()}
    assert traces == {loud.headers["x-keel-trace-id"]}


def request_id_of(response: Any) -> str:
    request_id: str = response.headers["x-keel-request-id"]
    return request_id


@pytest.mark.parametrize("collector", ["hanging", "down"])
async def test_a_hanging_or_dead_collector_never_fails_a_request(
    collector: str, keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    received = Received()
    with serve_on_loopback(http_receiver(received, hang_s=3)) as hanging:
        endpoint = (
            f"{hanging}/v1/traces"
            if collector == "hanging"
            else f"http://127.0.0.1:{free_port()}/v1/traces"
        )
        tracing = {"otlp": {"endpoint": endpoint, "timeout_s": 1, "max_queue_size": 4}}
        settings = settings_for(keel_home, fake_openai_url, tracing=tracing)
        async with running_app(settings) as (app, client):
            for _ in range(6):  # more spans than the export queue holds: the rest are dropped
                response = await client.post("/v1/chat/completions", json=chat())
                assert response.status_code == 200
            await app.state.keel.tracing.flush()
            # Kept in Keel all the same.
            await app.state.keel.recorder.flush()
            view = await client.get(f"/v1/keel/requests/{request_id_of(response)}/trace")
            assert view.status_code == 200
