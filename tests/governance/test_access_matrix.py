"""Every route enforces its permission: the role-by-route matrix, and the ways a credential
can be wrong (missing, malformed, unknown, revoked, expired, scoped elsewhere)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from keel.governance.permissions import (
    PUBLIC_ROUTES,
    ROUTE_PERMISSIONS,
    permission_for,
    route_class,
)
from keel.identity import ROLES, Actor
from keel.server import create_app
from tests.conftest import flushed_records, remote_settings, running_app

ADMIN_KEY = "test-bootstrap-admin-key-0123456789"
ADMIN = Actor("admin-key", frozenset({"admin"}), kind="bootstrap")
# The documented contract (docs/governance.md, "Roles and permissions"): the weakest role holding
# each permission. Written out here, not read from keel.governance.permissions, so a wrong entry
# in the code's table fails this test.
WEAKEST_ROLE = {
    "self": "viewer",
    "models.read": "viewer",
    "deployments.read": "viewer",
    "requests.read": "viewer",
    "registry.read": "viewer",
    "usage.read": "viewer",
    "metrics.read": "viewer",
    "quality.read": "viewer",
    "alerts.read": "viewer",
    "experiments.read": "viewer",
    "drift.read": "viewer",
    "inference": "developer",
    "registry.write": "developer",
    "keys.own": "developer",
    "experiments.write": "developer",
    "registry.approve": "maintainer",
    "directory.read": "maintainer",
    "alerts.write": "maintainer",
    "directory.write": "admin",
    "audit.read": "admin",
}
ROLE_ORDER = ["viewer", "developer", "maintainer", "admin"]


def _documented_allows(role: str, permission: str | None) -> bool:
    weakest = "admin" if permission is None else WEAKEST_ROLE[permission]
    return ROLE_ORDER.index(role) >= ROLE_ORDER.index(weakest)


_SAMPLE = {
    "name": "nobody",
    "model_id": "fake-model",
    "request_id": "req_missing",
    "key_id": "key_missing",
    "ref": "1",
    "version": "1",
    "alias": "staging",
    "stage": "staging",
    "promotion_id": "prm_missing",
    "kind": "model",
    "entity_id": "nobody",
    "model": "fake-model",
    "run_id": "run_missing",
}


def governed_settings(home: Path, url: str, **extra: Any) -> Any:
    models = [{"id": "fake-model", "provider": "openai", "api_base": url, "api_key": "sk-up"}]
    return remote_settings(home, models, auth={"admin_key": ADMIN_KEY}, **extra)


@pytest.fixture
async def governed(
    tmp_path: Path, fake_openai_url: str
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient, dict[str, str]]]:
    """A server requiring auth, with a key per role (and the keys' secrets by role)."""
    async with running_app(governed_settings(tmp_path, fake_openai_url)) as (app, client):
        directory = app.state.keel.directory
        directory.create_team("ml")
        secrets: dict[str, str] = {}
        for role in ROLES:
            directory.create_user(f"u-{role}", role=role, team="ml")
            _, secrets[role] = directory.create_key(f"u-{role}", name="k", created_by=ADMIN)
        await app.state.keel.access.refresh()
        yield app, client, secrets


def _routes(app: FastAPI) -> list[tuple[str, str]]:
    """Every API route as (method, path template), `:path` converters included."""
    # Recent FastAPI releases keep included routers as one opaque entry in `app.routes`; the
    # OpenAPI schema lists every API route (without converters, which the matrix keys have).
    templates = {_plain(path): path for _, path in ROUTE_PERMISSIONS}
    return sorted(
        (method.upper(), templates.get(path, path))
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    )


def _plain(path: str) -> str:
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", path)


def _url(path: str) -> str:
    return re.sub(r"\{(\w+)(?::path)?\}", lambda m: _SAMPLE[m.group(1)], path)


async def _call(
    client: httpx.AsyncClient, method: str, path: str, secret: str | None
) -> httpx.Response:
    headers = {"authorization": f"Bearer {secret}"} if secret else {}
    body = {} if method in ("POST", "PUT", "PATCH") else None
    return await client.request(method, _url(path), headers=headers, json=body)


def test_every_route_has_a_permission(tmp_path: Path) -> None:
    app = create_app(governed_settings(tmp_path, "http://127.0.0.1:9"))
    missing = [
        f"{method} {path}"
        for method, path in _routes(app)
        if (method, path) not in ROUTE_PERMISSIONS and (method, path) not in PUBLIC_ROUTES
    ]
    assert missing == []
    stale = sorted(set(ROUTE_PERMISSIONS) - set(_routes(app)))
    assert stale == []


async def test_role_by_route_matrix(
    governed: tuple[FastAPI, httpx.AsyncClient, dict[str, str]],
) -> None:
    app, client, secrets = governed
    wrong: list[str] = []
    assert len(_routes(app)) >= 50
    for method, path in _routes(app):
        if (method, path) in PUBLIC_ROUTES:
            continue
        permission = permission_for(method, path)
        anonymous = await _call(client, method, path, None)
        if anonymous.status_code != 401:
            wrong.append(f"anonymous {method} {path}: {anonymous.status_code}")
        for role in ROLES:
            response = await _call(client, method, path, secrets[role])
            allowed = _documented_allows(role, permission)
            denied = response.status_code in (401, 403) and response.json()["error"]["code"] in (
                "insufficient_role",
                "missing_api_key",
                "invalid_api_key",
            )
            if allowed == denied or response.status_code >= 500:
                wrong.append(f"{role} {method} {path}: {response.status_code} {response.text}")
    assert wrong == []


async def test_public_routes_need_no_credential(
    governed: tuple[FastAPI, httpx.AsyncClient, dict[str, str]],
) -> None:
    _, client, _ = governed
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/openapi.json")).status_code == 200


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Bearer a b",
        "Bearer " + "x" * 10_000,
        "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
        "Bearer ' OR 1=1 --",
        "bearer keel_sk_" + "A" * 43,
    ],
)
async def test_malformed_credentials_get_401(
    governed: tuple[FastAPI, httpx.AsyncClient, dict[str, str]], header: str
) -> None:
    _, client, _ = governed
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions")):
        response = await client.request(method, path, headers={"authorization": header}, json={})
        assert response.status_code == 401, (header[:20], response.text)
        error = response.json()["error"]
        assert error["type"] == "authentication_error"
        assert header.split(" ", 1)[-1][:40] not in error["message"] or len(header) < 12


async def test_revoked_expired_and_scoped_keys(
    governed: tuple[FastAPI, httpx.AsyncClient, dict[str, str]],
) -> None:
    app, client, _ = governed
    keel = app.state.keel
    directory = keel.directory
    revoked, revoked_secret = directory.create_key("u-developer", name="r", created_by=ADMIN)
    directory.revoke_key(revoked["id"], by=ADMIN)
    soon = datetime.now(UTC) + timedelta(seconds=1)
    _, expiring_secret = directory.create_key(
        "u-developer", name="e", created_by=ADMIN, expires_at=soon
    )
    _, other_model = directory.create_key(
        "u-developer", name="m", created_by=ADMIN, models=["another-model"]
    )
    _, inference_only = directory.create_key(
        "u-developer", name="i", created_by=ADMIN, routes=["inference"]
    )
    _, management_only = directory.create_key(
        "u-developer", name="g", created_by=ADMIN, routes=["management"]
    )
    _, elsewhere = directory.create_key(
        "u-developer", name="ip", created_by=ADMIN, ip_allowlist=["10.1.0.0/16"]
    )
    await keel.access.refresh()
    chat = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}

    def bearer(secret: str) -> dict[str, str]:
        return {"authorization": f"Bearer {secret}"}

    response = await client.post("/v1/chat/completions", json=chat, headers=bearer(revoked_secret))
    assert response.status_code == 401
    response = await client.post("/v1/chat/completions", json=chat, headers=bearer(other_model))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "model_not_allowed"
    response = await client.post("/v1/chat/completions", json=chat, headers=bearer(inference_only))
    assert response.status_code == 200
    response = await client.get("/v1/keel/requests", headers=bearer(inference_only))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "key_scope"
    response = await client.post("/v1/chat/completions", json=chat, headers=bearer(management_only))
    assert response.status_code == 403
    response = await client.get("/v1/keel/requests", headers=bearer(management_only))
    assert response.status_code == 200
    response = await client.get("/v1/models", headers=bearer(elsewhere))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "ip_not_allowed"
    response = await client.get("/v1/models", headers=bearer(expiring_secret))
    assert response.status_code == 200
    await asyncio.sleep(1.1)  # no reload: expiry is checked against the clock
    response = await client.get("/v1/models", headers=bearer(expiring_secret))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "expired_api_key"
    assert route_class("inference") == "inference"


async def test_no_secret_reaches_logs_records_audit_or_errors(
    governed: tuple[FastAPI, httpx.AsyncClient, dict[str, str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, client, secrets = governed
    caplog.set_level(logging.DEBUG)
    created = await client.post(
        "/v1/keel/keys",
        json={"user": "u-developer", "name": "leak-check"},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert created.status_code == 201
    new_secret = created.json()["secret"]
    chat = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
    bodies = []
    for secret in [*secrets.values(), new_secret]:
        for payload in (chat, {"model": "missing", "messages": []}):
            response = await client.post(
                "/v1/chat/completions", json=payload, headers={"authorization": f"Bearer {secret}"}
            )
            bodies.append(response.text)
    bodies.append(
        (await client.get("/v1/keel/keys", headers={"authorization": f"Bearer {ADMIN_KEY}"})).text
    )
    bodies.append(
        (
            await client.post(
                "/v1/chat/completions",
                json=chat,
                headers={"authorization": f"Bearer {new_secret}x"},
            )
        ).text
    )
    records = await flushed_records(app)
    await app.state.keel.audit.flush()
    audit = app.state.keel.audit.query(limit=1000)
    haystack = "\n".join([*bodies, caplog.text, repr(records), repr(audit)])
    for secret in [*secrets.values(), new_secret, ADMIN_KEY, "sk-up"]:
        assert secret not in haystack
    assert any(entry["action"] == "key.create" for entry in audit)
    assert any(entry["action"] == "inference.chat.completions" for entry in audit)


async def test_sql_looking_filters_are_4xx_or_empty(
    governed: tuple[FastAPI, httpx.AsyncClient, dict[str, str]],
) -> None:
    _, client, _ = governed
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    for url in (
        "/v1/keel/requests?model=' OR 1=1 --",
        "/v1/keel/users?team='; DROP TABLE principals; --",
        "/v1/keel/keys?user=%00",
        "/v1/keel/usage?team=" + "x" * 5000,
        "/v1/keel/audit?actor=' OR ''='",
        "/v1/keel/audit?since=yesterday",
    ):
        response = await client.get(url, headers=admin)
        assert 200 <= response.status_code < 500, (url, response.text)
        if response.status_code == 200:
            assert response.json()["data"] == [] or "requests" not in url
    big = {"authorization": f"Bearer {ADMIN_KEY}", "x-big": "y" * 60_000}
    response = await client.get("/v1/models", headers=big)
    assert response.status_code < 500


async def test_nothing_reads_a_body_before_authentication(
    governed: tuple[FastAPI, httpx.AsyncClient, dict[str, str]],
) -> None:
    app, client, _ = governed
    limit = app.state.keel.settings.server.max_request_body_bytes
    junk = b"{" * 1024
    assert (await client.post("/v1/keel/users", content=junk)).status_code == 401
    big = b'{"name": "' + b"x" * (limit + 10) + b'"}'
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    too_large = await client.post("/v1/keel/users", content=big, headers=admin)
    assert too_large.status_code == 413
    assert too_large.json()["error"]["code"] == "request_too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no content-length: counted as it arrives
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    as_json = {**admin, "content-type": "application/json"}
    streamed = await client.post("/v1/keel/teams", content=chunks(), headers=as_json)
    assert streamed.status_code == 413
    guessed = {"authorization": "Bearer keel_sk_guessed"}
    assert (await client.get("/wp-login.php", headers=guessed)).status_code == 401
    await app.state.keel.audit.flush()
    # Both are kept as evidence, the first of each kind from a source at once.
    refused = app.state.keel.audit.query(action="access.unauthenticated", limit=100)
    codes = [entry["detail"]["code"] for entry in refused]
    assert codes == ["missing_api_key", "invalid_api_key"]
    assert "keel_sk_guessed" not in str(refused)
