"""One rule for a declared body size, on the inference routes (which read their own bodies)
and on every other route (whose bodies the authentication layer caps): a content-length that
is not a plain decimal number is the client's 400, never a 500 and never taken as 0."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from tests.conftest import remote_settings, running_app

BODY = b'{"name": "ml"}'


async def _send(app: FastAPI, path: str, content_length: str) -> tuple[int, dict[str, Any]]:
    """A raw ASGI request, so no HTTP client rewrites the header."""
    import json

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", content_length.encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
    }
    messages = [{"type": "http.request", "body": BODY, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body)


@pytest.mark.parametrize("path", ["/v1/keel/teams", "/v1/chat/completions"])
@pytest.mark.parametrize("declared", ["abc", "-1", "1e3", "²", "١٢"])
async def test_a_content_length_that_is_not_a_number_is_a_400(
    keel_home: Path, fake_openai_url: str, path: str, declared: str
) -> None:
    settings = remote_settings(
        keel_home, [{"id": "gpt", "provider": "openai", "api_base": fake_openai_url}]
    )
    async with running_app(settings) as (app, _client):
        status, body = await _send(app, path, declared)
    assert status == 400
    assert body["error"]["message"] == "the content-length header is not a number"
