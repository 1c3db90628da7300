"""A key is never wider than the credential that creates or rotates it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from keel.identity import Actor
from tests.conftest import remote_settings, running_app

ADMIN_KEY = "bounds-test-admin-key-0123456789abcdef"
ADMIN = Actor("admin-key", frozenset({"admin"}), kind="bootstrap")


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


@pytest.fixture
async def app_client(
    tmp_path: Path, fake_openai_url: str
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    models = [{"id": "fake-model", "provider": "openai", "api_base": fake_openai_url}]
    settings = remote_settings(tmp_path, models, auth={"admin_key": ADMIN_KEY})
    async with running_app(settings) as (app, client):
        app.state.keel.directory.create_user("boss", role="admin")
        app.state.keel.directory.create_user("dev", role="developer")
        yield app, client


async def test_a_narrowed_admin_key_mints_only_narrowed_keys(
    app_client: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, client = app_client
    expires = datetime.now(UTC) + timedelta(hours=1)
    narrowed, secret = app.state.keel.directory.create_key(
        "boss",
        name="narrow",
        created_by=ADMIN,
        role="developer",
        models=["fake-model"],
        environment="sandbox",
        ip_allowlist=["127.0.0.0/8"],
        expires_at=expires,
    )
    await app.state.keel.access.refresh()
    minted = await client.post("/v1/keel/keys", json={}, headers=bearer(secret))
    assert minted.status_code == 201, minted.text
    key = minted.json()
    assert (key["role"], key["environment"], key["models"]) == (
        "developer",
        "sandbox",
        ["fake-model"],
    )
    assert key["ip_allowlist"] == ["127.0.0.0/8"]
    assert datetime.fromisoformat(key["expires_at"]) <= expires
    me = (await client.get("/v1/keel/whoami", headers=bearer(key["secret"]))).json()
    assert me["role"] == "developer"
    assert (await client.get("/v1/keel/users", headers=bearer(key["secret"]))).status_code == 403

    for wider in (
        {"role": "admin"},
        {"models": ["fake-model", "other"]},
        {"environment": "production"},
        {"ip_allowlist": ["0.0.0.0/0"]},
        {"expires_in_s": 7200},
    ):
        refused = await client.post("/v1/keel/keys", json=wider, headers=bearer(secret))
        assert refused.status_code == 403, (wider, refused.text)
        assert refused.json()["error"]["code"] == "key_bounds"

    # Nor can the narrowed key rotate its owner's unrestricted key into a fresh one.
    full, _ = app.state.keel.directory.create_key("boss", name="full", created_by=ADMIN)
    rotated = await client.post(f"/v1/keel/keys/{full['id']}/rotate", headers=bearer(secret))
    assert rotated.status_code == 403
    # Rotating itself stays within its bounds.
    again = await client.post(f"/v1/keel/keys/{narrowed['id']}/rotate", headers=bearer(secret))
    assert again.status_code == 201 and again.json()["environment"] == "sandbox"


async def test_only_admins_set_key_limits_and_others_inherit_theirs(
    app_client: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, client = app_client
    limited, secret = app.state.keel.directory.create_key(
        "dev", name="limited", created_by=ADMIN, limits={"rpm": 5}
    )
    await app.state.keel.access.refresh()
    refused = await client.post(
        "/v1/keel/keys", json={"limits": {"rpm": 1_000_000}}, headers=bearer(secret)
    )
    assert refused.status_code == 403
    assert "only an admin" in refused.json()["error"]["message"]
    minted = await client.post("/v1/keel/keys", json={"name": "second"}, headers=bearer(secret))
    assert minted.status_code == 201
    assert minted.json()["limits"] == {"rpm": 5}
    # A rotation keeps the limits the key already had.
    rotated = await client.post(f"/v1/keel/keys/{limited['id']}/rotate", headers=bearer(secret))
    assert rotated.status_code == 201 and rotated.json()["limits"] == {"rpm": 5}
    admin_set = await client.post(
        "/v1/keel/keys", json={"user": "dev", "limits": {"rpm": 50}}, headers=bearer(ADMIN_KEY)
    )
    assert admin_set.status_code == 201 and admin_set.json()["limits"] == {"rpm": 50}


async def test_an_explicit_role_stays_when_the_owner_is_promoted(
    app_client: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, client = app_client
    key, secret = app.state.keel.directory.create_key(
        "dev", name="pinned", created_by=ADMIN, role="developer"
    )
    assert key["role"] == "developer"
    app.state.keel.directory.update_user("dev", {"role": "admin"})
    await app.state.keel.access.refresh()
    assert (await client.get("/v1/keel/whoami", headers=bearer(secret))).json()["role"] == (
        "developer"
    )


async def test_environments_bound_both_ways(
    app_client: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, client = app_client
    _, production = app.state.keel.directory.create_key("dev", name="p", created_by=ADMIN)
    await app.state.keel.access.refresh()
    refused = await client.post(
        "/v1/keel/keys", json={"environment": "sandbox"}, headers=bearer(production)
    )
    assert refused.status_code == 403 and refused.json()["error"]["param"] == "environment"


async def test_an_admin_key_creates_keys_for_either_environment(
    app_client: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    # The admin key created at first start is a production key of an admin, like this one.
    app, client = app_client
    _, production = app.state.keel.directory.create_key("boss", name="p", created_by=ADMIN)
    await app.state.keel.access.refresh()
    assert production.startswith("keel_sk_")
    sandbox = await client.post(
        "/v1/keel/keys", json={"user": "dev", "environment": "sandbox"}, headers=bearer(production)
    )
    assert sandbox.status_code == 201, sandbox.text
    assert sandbox.json()["secret"].startswith("keel_sb_")
    # Left open, the environment is the creating key's.
    default = await client.post("/v1/keel/keys", json={}, headers=bearer(production))
    assert default.status_code == 201 and default.json()["environment"] == "production"


async def test_a_key_revoked_while_its_request_arrives_acts_no_more(
    app_client: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    from keel.errors import AuthenticationError

    app, _ = app_client
    keel = app.state.keel
    key, secret = keel.directory.create_key("dev", name="late", created_by=ADMIN)
    await keel.access.refresh()
    actor = await keel.access.authenticate(bearer(secret), "127.0.0.1")
    keel.directory.revoke_key(key["id"], by=ADMIN)
    await keel.access.refresh()
    with pytest.raises(AuthenticationError):
        keel.access.still_valid(actor)
    with pytest.raises(AuthenticationError):
        keel.policy.admit_model(actor, "fake-model")
