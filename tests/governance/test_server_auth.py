"""Authentication as the server applies it: the open-mode rule, the first admin, SSO tokens
through the whole app, and a key change seen by a second replica of the same database."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from keel.config import Settings
from keel.errors import ConfigError
from keel.governance.access import auth_required
from keel.governance.bootstrap import ADMIN_KEY_FILE
from keel.governance.config import AuthConfig
from keel.server import create_app
from tests.conftest import remote_settings, running_app
from tests.governance.oidc_helpers import AUDIENCE, ISSUER, mint, public_jwk


@pytest.mark.parametrize(
    ("config", "host", "required"),
    [
        ({}, "127.0.0.1", False),
        ({}, "::1", False),
        ({}, "localhost", False),
        ({}, "0.0.0.0", True),
        ({}, "10.0.0.5", True),
        ({"admin_key": "k" * 32}, "127.0.0.1", True),
        ({"required": True}, "127.0.0.1", True),
        ({"required": False}, "127.0.0.1", False),
    ],
)
def test_the_open_mode_rule(config: dict[str, object], host: str, required: bool) -> None:
    assert auth_required(AuthConfig.model_validate(config), host) is required


def test_open_mode_is_refused_on_a_public_bind(tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {"home": str(tmp_path), "server": {"host": "0.0.0.0"}, "auth": {"required": False}}
    )
    with pytest.raises(ConfigError, match=r"auth\.required: false"):
        create_app(settings)


async def test_the_first_start_creates_an_admin_whose_key_only_the_file_holds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = remote_settings(tmp_path, [], server={"host": "0.0.0.0"})
    async with running_app(settings) as (_, client):
        assert (await client.get("/v1/models")).status_code == 401
        path = tmp_path / ADMIN_KEY_FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        secret = path.read_text().strip()
        assert secret.startswith("keel_sk_")
        assert secret not in caplog.text and str(path) in caplog.text
        me = await client.get("/v1/keel/whoami", headers={"authorization": f"Bearer {secret}"})
        assert me.json()["name"] == "admin" and me.json()["role"] == "admin"
    path.unlink()
    async with running_app(settings) as (_, client):
        # A second start finds the admin: nothing new is created.
        assert not path.exists()


async def test_sso_tokens_through_the_app(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [public_jwk(key, "k1")]}))
    issuer = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_file": str(jwks)}
    settings = remote_settings(tmp_path, [], auth={"required": True, "oidc": [issuer]})
    async with running_app(settings) as (_, client):
        token = mint(key, keel_role=["viewer", "maintainer"], team="research")
        me = await client.get("/v1/keel/whoami", headers={"authorization": f"Bearer {token}"})
        assert me.status_code == 200, me.text
        body = me.json()
        assert (body["name"], body["kind"], body["role"], body["team"]) == (
            "oidc:alice@example.com",
            "oidc",
            "maintainer",
            "research",
        )
        # The permission matrix applies to SSO users like to keys.
        users = await client.get("/v1/keel/users", headers={"authorization": f"Bearer {token}"})
        assert users.status_code == 200
        created = await client.post(
            "/v1/keel/users", json={"name": "x"}, headers={"authorization": f"Bearer {token}"}
        )
        assert created.status_code == 403
        expired = mint(key, exp=1)
        refused = await client.get(
            "/v1/keel/whoami", headers={"authorization": f"Bearer {expired}"}
        )
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_token"
        assert expired not in refused.text


async def test_a_second_replica_sees_revocations(tmp_path: Path, postgres_url: str) -> None:
    settings = remote_settings(
        tmp_path,
        [],
        database_url=postgres_url,
        auth={"admin_key": "replica-admin-key-0123456789", "refresh_interval_s": 0.1},
    )
    admin = {"authorization": "Bearer replica-admin-key-0123456789"}
    async with running_app(settings) as (_, first), running_app(settings) as (_, second):
        assert (
            await first.post("/v1/keel/users", json={"name": "bob"}, headers=admin)
        ).status_code == 201
        created = await first.post("/v1/keel/keys", json={"user": "bob"}, headers=admin)
        bob = {"authorization": f"Bearer {created.json()['secret']}"}
        await _eventually(second, bob, 200)
        revoked = await first.post(f"/v1/keel/keys/{created.json()['id']}/revoke", headers=admin)
        assert revoked.json()["status"] == "revoked"
        assert (
            await first.get("/v1/keel/whoami", headers=bob)
        ).status_code == 401  # applied before acknowledged
        await _eventually(second, bob, 401)


async def _eventually(client: object, headers: dict[str, str], status: int) -> None:
    import asyncio

    for _ in range(100):
        response = await client.get("/v1/keel/whoami", headers=headers)  # type: ignore[attr-defined]
        if response.status_code == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never answered {status}")


async def test_a_revocation_applies_before_it_is_acknowledged(tmp_path: Path) -> None:
    admin = {"authorization": "Bearer revoke-admin-key-0123456789"}
    settings = remote_settings(tmp_path, [], auth={"admin_key": "revoke-admin-key-0123456789"})
    async with running_app(settings) as (_, client):
        assert (
            await client.post("/v1/keel/users", json={"name": "eve"}, headers=admin)
        ).status_code == 201
        for _ in range(20):
            created = (
                await client.post("/v1/keel/keys", json={"user": "eve"}, headers=admin)
            ).json()
            eve = {"authorization": f"Bearer {created['secret']}"}
            assert (await client.get("/v1/keel/whoami", headers=eve)).status_code == 200
            await client.post(f"/v1/keel/keys/{created['id']}/revoke", headers=admin)
            assert (await client.get("/v1/keel/whoami", headers=eve)).status_code == 401
        disabled = await client.patch("/v1/keel/users/eve", json={"disabled": True}, headers=admin)
        assert disabled.json()["disabled"] is True


async def test_replicas_starting_together_on_a_fresh_database(postgres_url: str) -> None:
    import asyncio

    from keel.governance.access import Access
    from keel.governance.config import AuthConfig
    from keel.governance.directory import Directory
    from keel.store import Database

    databases = [Database(postgres_url) for _ in range(4)]
    databases[0].migrate()
    accesses = [
        Access(Directory(database), AuthConfig(required=True), host="0.0.0.0")
        for database in databases
    ]
    await asyncio.gather(*(access.start() for access in accesses))
    assert [org["name"] for org in Directory(databases[0]).list_orgs()] == ["default"]
    for access, database in zip(accesses, databases, strict=True):
        await access.close()
        database.dispose()
