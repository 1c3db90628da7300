"""A web page open in the browser of the person running Keel cannot use Keel: not by DNS
rebinding (a foreign Host), not by a cross-site "simple" request (text/plain, a form, a body
without a type, a bare POST), not by reading answers (CORS is off unless origins are listed).
The requests below carry the headers a browser sends."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI

from keel.config_loading import load_settings
from keel.errors import ConfigError
from keel.sdk import Keel
from keel.server import create_app
from tests.conftest import flushed_records, remote_settings, running_app
from tests.fakes.openai import FakeOpenAI
from tests.fakes.server import serve_on_loopback

ADMIN_KEY = "test-bootstrap-admin-key-0123456789"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
CHAT = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}
CHAT_BYTES = json.dumps(CHAT).encode()
EVIL = "http://evil.example"
# What a page at evil.example sends for fetch(url, {method: "POST", mode: "no-cors", body}).
SIMPLE_POST = {
    "origin": EVIL,
    "referer": EVIL + "/",
    "sec-fetch-mode": "no-cors",
    "sec-fetch-site": "cross-site",
    "user-agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
    "content-type": "text/plain;charset=UTF-8",
}
PREFLIGHT = {
    "origin": EVIL,
    "access-control-request-method": "POST",
    "access-control-request-headers": "authorization,content-type",
    "sec-fetch-mode": "cors",
}
CARD_YAML = "name: curie\ndescription: the help-center assistant\n"


def _settings(home: Path, api_base: str, **extra: Any) -> Any:
    models = [{"id": "gpt", "provider": "openai", "api_base": api_base, "timeout_s": 5}]
    return remote_settings(home, models, **extra)


@pytest.fixture
async def open_mode(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The default: loopback bind, no admin key, every caller the local admin."""
    async with running_app(_settings(keel_home, fake_openai_url)) as served:
        yield served


def _error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    assert body["code"] == code and body["message"]


def _no_cors(response: httpx.Response) -> None:
    assert not [name for name in response.headers if name.startswith("access-control-")]


# -- DNS rebinding ---------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "127.0.0.1.evil.example"])
async def test_open_mode_refuses_a_foreign_host_name(
    open_mode: tuple[FastAPI, httpx.AsyncClient], fake_openai: FakeOpenAI, host: str
) -> None:
    app, client = open_mode
    # After rebinding the page's requests are same-origin: a browser sends no Origin on a GET.
    for response in (
        await client.get("/v1/models", headers={"host": host}),
        await client.get("/v1/keel/whoami", headers={"host": host}),
        await client.get("/healthz", headers={"host": host}),
        await client.post("/v1/chat/completions", json=CHAT, headers={"host": host}),
    ):
        _error(response, 403, "host_not_allowed")
        assert response.json()["error"]["type"] == "permission_error"
    assert fake_openai.requests == []
    assert await flushed_records(app) == []


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.0.0.1:8080",
        "127.45.6.7:8080",
        "localhost",
        "LocalHost:8080",
        "localhost.",
        "keel.localhost:8080",
        "[::1]",
        "[::1]:8080",
    ],
)
async def test_open_mode_answers_loopback_host_names(
    open_mode: tuple[FastAPI, httpx.AsyncClient], host: str
) -> None:
    _, client = open_mode
    response = await client.post("/v1/chat/completions", json=CHAT, headers={"host": host})
    assert response.status_code == 200, response.text


# -- cross-site requests ---------------------------------------------------------------------


async def test_open_mode_refuses_a_cross_site_simple_request(
    open_mode: tuple[FastAPI, httpx.AsyncClient], fake_openai: FakeOpenAI
) -> None:
    app, client = open_mode
    _error(
        await client.post("/v1/chat/completions", content=CHAT_BYTES, headers=SIMPLE_POST),
        403,
        "origin_not_allowed",
    )
    # A page that hides its referrer, or a sandboxed frame, sends "Origin: null".
    hidden = {**SIMPLE_POST, "origin": "null"}
    _error(
        await client.post("/v1/chat/completions", content=CHAT_BYTES, headers=hidden),
        403,
        "origin_not_allowed",
    )
    # A bare POST needs no body to do harm; it is refused for its origin alone.
    bare = {"origin": EVIL, "sec-fetch-site": "cross-site"}
    _error(await client.post("/v1/keel/audit/verify", headers=bare), 403, "origin_not_allowed")
    # Reads too: the answer would not reach the page, but nothing is served to it either.
    _error(await client.get("/v1/keel/whoami", headers={"origin": EVIL}), 403, "origin_not_allowed")
    assert fake_openai.requests == []
    assert await flushed_records(app) == []


async def test_open_mode_answers_pages_on_loopback(
    open_mode: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    _, client = open_mode
    for origin in ("http://localhost:3000", "http://127.0.0.1:8080", "https://ui.localhost"):
        response = await client.post("/v1/chat/completions", json=CHAT, headers={"origin": origin})
        assert response.status_code == 200, response.text
        _no_cors(response)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain;charset=UTF-8", CHAT_BYTES),
        ("application/x-www-form-urlencoded", b"model=gpt&messages=hi"),
        ("multipart/form-data; boundary=x", b"--x\r\n\r\n--x--\r\n"),
        ("application/yaml", b"model: gpt\n"),
        ("", CHAT_BYTES),
        (None, CHAT_BYTES),
    ],
)
async def test_a_body_not_declared_json_is_415(
    open_mode: tuple[FastAPI, httpx.AsyncClient],
    fake_openai: FakeOpenAI,
    content_type: str | None,
    body: bytes,
) -> None:
    app, client = open_mode
    headers = {} if content_type is None else {"content-type": content_type}
    for path in ("/v1/chat/completions", "/v1/embeddings", "/v1/keel/teams"):
        response = await client.post(path, content=body, headers=headers)
        _error(response, 415, "unsupported_media_type")
        assert response.json()["error"]["type"] == "invalid_request_error"
    patch = await client.patch("/v1/keel/teams/ml", content=body, headers=headers)
    _error(patch, 415, "unsupported_media_type")
    assert fake_openai.requests == []
    assert await flushed_records(app) == []


async def test_a_declared_type_without_a_body_is_refused_too(
    open_mode: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    # fetch(url, {method: "POST", body: ""}) sends text/plain with an empty body.
    _, client = open_mode
    response = await client.post("/v1/keel/audit/verify", headers={"content-type": "text/plain"})
    _error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/vnd.keel+json",
    ],
)
async def test_json_media_types_are_served(
    open_mode: tuple[FastAPI, httpx.AsyncClient], content_type: str
) -> None:
    _, client = open_mode
    response = await client.post(
        "/v1/chat/completions", content=CHAT_BYTES, headers={"content-type": content_type}
    )
    assert response.status_code == 200, response.text


async def test_bare_actions_and_yaml_cards_keep_working(
    open_mode: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    _, client = open_mode
    verified = await client.post("/v1/keel/audit/verify")
    assert verified.status_code == 200, verified.text
    card = await client.post(
        "/v1/keel/registry/models",
        content=CARD_YAML,
        headers={"content-type": "application/yaml"},
    )
    assert card.status_code == 201, card.text
    version = await client.post(
        "/v1/keel/registry/models/curie/versions",
        content=CARD_YAML.replace("help-center", "billing"),
        headers={"content-type": "text/yaml; charset=utf-8"},
    )
    assert version.status_code == 201, version.text
    archived = await client.post("/v1/keel/registry/models/curie/archive")
    assert archived.status_code == 200, archived.text
    # YAML is for model cards only.
    yaml_elsewhere = await client.post(
        "/v1/keel/registry/models/curie/archive",
        content="reason: old\n",
        headers={"content-type": "application/yaml"},
    )
    _error(yaml_elsewhere, 415, "unsupported_media_type")


# -- CORS ------------------------------------------------------------------------------------


async def test_cors_is_off_by_default(
    open_mode: tuple[FastAPI, httpx.AsyncClient], keel_home: Path, fake_openai_url: str
) -> None:
    _, client = open_mode
    preflight = await client.options("/v1/chat/completions", headers=PREFLIGHT)
    assert preflight.status_code >= 400
    _no_cors(preflight)
    local = {**PREFLIGHT, "origin": "http://localhost:3000"}
    _no_cors(await client.options("/v1/chat/completions", headers=local))
    _no_cors(
        await client.post(
            "/v1/chat/completions", json=CHAT, headers={"origin": "http://localhost:3000"}
        )
    )
    settings = _settings(keel_home / "auth", fake_openai_url, auth={"admin_key": ADMIN_KEY})
    async with running_app(settings) as (_, required):
        preflight = await required.options("/v1/chat/completions", headers=PREFLIGHT)
        assert preflight.status_code >= 400
        _no_cors(preflight)
        answered = await required.post(
            "/v1/chat/completions", json=CHAT, headers={**ADMIN, "origin": EVIL}
        )
        assert answered.status_code == 200
        _no_cors(answered)


async def test_listed_origins_get_cors_and_no_others(keel_home: Path, fake_openai_url: str) -> None:
    app_origin = "https://app.example"
    settings = _settings(keel_home, fake_openai_url, server={"cors_allow_origins": [app_origin]})
    async with running_app(settings) as (_, client):
        preflight = await client.options(
            "/v1/chat/completions", headers={**PREFLIGHT, "origin": app_origin}
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == app_origin
        assert "POST" in preflight.headers["access-control-allow-methods"]
        allowed_headers = preflight.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed_headers and "content-type" in allowed_headers
        assert "access-control-allow-credentials" not in preflight.headers
        answered = await client.post(
            "/v1/chat/completions", json=CHAT, headers={"origin": app_origin}
        )
        assert answered.status_code == 200
        assert answered.headers["access-control-allow-origin"] == app_origin
        assert "x-keel-request-id" in answered.headers["access-control-expose-headers"]
        # A refusal an allowed page receives is readable by it.
        refused = await client.post(
            "/v1/chat/completions",
            content=CHAT_BYTES,
            headers={"origin": app_origin, "content-type": "text/plain"},
        )
        _error(refused, 415, "unsupported_media_type")
        assert refused.headers["access-control-allow-origin"] == app_origin
        # Other origins: no grant, and in open mode no service.
        foreign = await client.options("/v1/chat/completions", headers=PREFLIGHT)
        assert "access-control-allow-origin" not in foreign.headers
        _error(
            await client.post("/v1/chat/completions", json=CHAT, headers={"origin": EVIL}),
            403,
            "origin_not_allowed",
        )


def test_every_origin_is_refused_in_open_mode(keel_home: Path) -> None:
    with pytest.raises(ConfigError, match="cors_allow_origins"):
        create_app(remote_settings(keel_home, [], server={"cors_allow_origins": ["*"]}))
    required = remote_settings(
        keel_home, [], server={"cors_allow_origins": ["*"]}, auth={"admin_key": ADMIN_KEY}
    )
    create_app(required)


# -- the host list where authentication is required --------------------------------------------


async def test_any_host_is_answered_where_authentication_is_required(
    keel_home: Path, fake_openai_url: str
) -> None:
    settings = _settings(keel_home, fake_openai_url, auth={"admin_key": ADMIN_KEY})
    async with running_app(settings) as (_, client):
        for host in ("keel.internal:8080", "10.0.0.7", "evil.example"):
            response = await client.get("/v1/models", headers={**ADMIN, "host": host})
            assert response.status_code == 200, (host, response.text)
        # The content-type rule holds whatever the mode; a caller with no credential is told
        # about the credential first.
        text = {"content-type": "text/plain"}
        unauthenticated = await client.post(
            "/v1/chat/completions", content=CHAT_BYTES, headers=text
        )
        _error(unauthenticated, 401, "missing_api_key")
        as_admin = {**ADMIN, **text}
        refused = await client.post("/v1/chat/completions", content=CHAT_BYTES, headers=as_admin)
        _error(refused, 415, "unsupported_media_type")


async def test_a_host_list_is_enforced_with_probes_exempt(
    keel_home: Path, fake_openai_url: str
) -> None:
    settings = _settings(
        keel_home,
        fake_openai_url,
        auth={"admin_key": ADMIN_KEY},
        server={"allowed_hosts": ["keel.example.com", "*.corp.example"]},
    )
    async with running_app(settings) as (_, client):
        for host in (
            "keel.example.com",
            "KEEL.example.com:443",
            "api.corp.example",
            "localhost:8080",
        ):
            response = await client.get("/v1/models", headers={**ADMIN, "host": host})
            assert response.status_code == 200, (host, response.text)
        for host in ("corp.example", "evil.example", "keel.example.com.evil.example", "10.0.0.7"):
            response = await client.get("/v1/models", headers={**ADMIN, "host": host})
            _error(response, 403, "host_not_allowed")
        # An orchestrator probes by the pod's address.
        assert (await client.get("/healthz", headers={"host": "10.0.0.7:8080"})).status_code == 200


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ({"allowed_hosts": ["https://keel.example.com"]}, "not a host name"),
        ({"allowed_hosts": ["keel.example.com:8080"]}, "not a host name"),
        ({"cors_allow_origins": ["https://app.example/path"]}, "not an origin"),
        ({"cors_allow_origins": ["app.example"]}, "not an origin"),
    ],
)
def test_the_settings_are_checked(tmp_path: Path, server: dict[str, Any], message: str) -> None:
    path = tmp_path / "keel.yaml"
    path.write_text(json.dumps({"server": server}), encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_settings(path)


# -- clients over a real socket --------------------------------------------------------------


def test_the_sdk_and_the_openai_sdk_work_over_a_real_socket(
    keel_home: Path, fake_openai_url: str
) -> None:
    app = create_app(_settings(keel_home, fake_openai_url))
    card = keel_home / "curie.yaml"
    keel_home.mkdir(parents=True, exist_ok=True)
    card.write_text(CARD_YAML, encoding="utf-8")
    with serve_on_loopback(app, lifespan="on") as url:
        with Keel(url) as keel:
            assert keel.chat("gpt", "hi")["choices"]
            assert keel.audit.verify()["ok"] is True
            assert keel.registry.add(card)["number"] == 1
            assert keel.registry.archive("curie")
        answer = openai.OpenAI(base_url=f"{url}/v1", api_key="unused").chat.completions.create(
            model="gpt", messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.choices
        # The same socket, as a rebound page would reach it.
        port = url.rsplit(":", 1)[1]
        rebound = httpx.get(f"{url}/v1/models", headers={"host": f"evil.example:{port}"})
        _error(rebound, 403, "host_not_allowed")
