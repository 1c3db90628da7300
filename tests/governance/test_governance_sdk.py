"""`Keel().governance` against a real Keel server (uvicorn on loopback, lifespan on) that
requires authentication: keys are created, used, rotated and revoked for real."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from keel.config import Settings
from keel.sdk import Keel, KeelAPIError
from keel.sdk.governance import UNSET, GovernanceAPI
from keel.server import create_app
from tests.conftest import remote_settings
from tests.fakes.server import serve_on_loopback

ADMIN_KEY = "keel-test-admin-key-0123456789abcdef"


def serve_keel(settings: Settings) -> AbstractContextManager[str]:
    """The whole Keel app, lifespan included, as a real HTTP server on 127.0.0.1."""
    return serve_on_loopback(create_app(settings), lifespan="on")


def keel_settings(home: Path, models: list[dict[str, Any]] | None = None) -> Settings:
    return remote_settings(home, models or [], auth={"admin_key": ADMIN_KEY})


@pytest.fixture
def served(keel_home: Path) -> Iterator[str]:
    with serve_keel(keel_settings(keel_home)) as url:
        yield url


@contextmanager
def governance(url: str, api_key: str) -> Iterator[GovernanceAPI]:
    with Keel(url, api_key=api_key) as client:
        yield client.governance


def refused(status: int, call: Any, *args: Any, **kwargs: Any) -> KeelAPIError:
    with pytest.raises(KeelAPIError) as caught:
        call(*args, **kwargs)
    assert caught.value.status_code == status, caught.value
    return caught.value


def test_the_client_exposes_governance() -> None:
    with Keel("http://127.0.0.1:9") as client:
        assert isinstance(client.governance, GovernanceAPI)
        assert repr(UNSET) == "UNSET"


def test_directory_keys_and_whoami(served: str) -> None:
    with governance(served, ADMIN_KEY) as admin:
        me = admin.whoami()
        assert me["role"] == "admin" and me["auth_required"] is True
        assert me["key_id"] is None  # the bootstrap key is not a stored key

        assert admin.orgs.create("acme")["name"] == "acme"
        assert {org["name"] for org in admin.orgs.list()} >= {"default", "acme"}
        team = admin.teams.create(
            "ml", org="acme", allowed_regions=["eu-west-1"], limits={"rpm": 600, "tpm": None}
        )
        assert team["org"] == "acme" and team["allowed_regions"] == ["eu-west-1"]
        assert team["limits"] == {"rpm": 600}
        assert admin.teams.get("ml")["name"] == "ml"
        assert [found["name"] for found in admin.teams.list()] == ["ml"]

        alice = admin.users.create("alice", team="ml", email="alice@example.com")
        assert (alice["role"], alice["team"], alice["org"]) == ("developer", "ml", "acme")
        bot = admin.users.create("ci-bot", kind="service_account", role="viewer", team="ml")
        assert bot["kind"] == "service_account"
        assert [user["name"] for user in admin.users.list(kind="service_account")] == ["ci-bot"]
        assert {user["name"] for user in admin.users.list(team="ml")} == {"alice", "ci-bot"}
        assert admin.users.get("alice")["email"] == "alice@example.com"

        key = admin.keys.create(user="alice", environment="sandbox", name="laptop")
        secret = key["secret"]
        assert secret.startswith("keel_sb_") and key["prefix"] == secret[:16]
        assert key["status"] == "active" and key["user"] == "alice"

        listed = admin.keys.list(user="alice")
        assert [found["id"] for found in listed] == [key["id"]]
        assert all("secret" not in found for found in listed)
        assert secret not in repr(listed)
        assert "secret" not in admin.keys.get(key["id"])

    with governance(served, secret) as as_alice:
        me = as_alice.whoami()
        assert (me["name"], me["role"], me["team"], me["org"]) == (
            "alice",
            "developer",
            "ml",
            "acme",
        )
        assert (me["key_id"], me["environment"]) == (key["id"], "sandbox")
        assert me["allowed_models"] is None


def test_updates_send_only_what_is_given(served: str) -> None:
    with governance(served, ADMIN_KEY) as admin:
        admin.teams.create("ml", allowed_regions=["eu-west-1"], limits={"rpm": 10})
        admin.users.create("alice", team="ml", email="a@example.com", limits={"tpm": 1000})

        only_limits = admin.teams.update("ml", limits={"rpm": 20, "usd_per_day": 5.0})
        assert only_limits["allowed_regions"] == ["eu-west-1"]  # untouched
        assert only_limits["limits"] == {"rpm": 20, "usd_per_day": 5.0}
        cleared = admin.teams.update("ml", allowed_regions=None)
        assert cleared["allowed_regions"] is None and cleared["limits"]["rpm"] == 20
        assert admin.teams.update("ml", allowed_regions=("us-east-1",))["allowed_regions"] == [
            "us-east-1"
        ]
        assert admin.teams.update("ml", allowed_regions="eu")["allowed_regions"] == ["eu"]

        promoted = admin.users.update("alice", role="maintainer")
        assert (promoted["role"], promoted["team"], promoted["email"]) == (
            "maintainer",
            "ml",
            "a@example.com",
        )
        assert promoted["limits"] == {"tpm": 1000}
        teamless = admin.users.update("alice", team=None)
        assert teamless["team"] is None and teamless["role"] == "maintainer"
        assert admin.users.update("alice", limits=None)["limits"] == {}
        assert admin.users.update("alice", team="ml", email=None)["email"] is None

        error = refused(400, admin.users.update, "alice", role="owner")
        assert error.param is not None and "role" in error.param
        refused(404, admin.teams.get, "nobody")
        refused(409, admin.teams.create, "ml")


def test_revoke_rotate_and_expiry(served: str) -> None:
    with governance(served, ADMIN_KEY) as admin:
        admin.users.create("alice")
        first = admin.keys.create(user="alice")
        assert first["secret"].startswith("keel_sk_")
        revoked = admin.keys.revoke(first["id"])
        assert revoked["status"] == "revoked" and revoked["revoked_at"]
        with governance(served, first["secret"]) as old:
            refused(401, old.whoami)

        second = admin.keys.create(user="alice", name="ci", expires_in_s=3600)
        rotated = admin.keys.rotate(second["id"])  # an hour of overlap by default
        assert rotated["id"] != second["id"] and rotated["rotated_from"] == second["id"]
        assert rotated["name"] == "ci" and rotated["secret"] != second["secret"]
        assert rotated["previous"]["id"] == second["id"]
        assert "secret" not in rotated["previous"]
        for secret in (second["secret"], rotated["secret"]):
            with governance(served, secret) as caller:
                assert caller.whoami()["name"] == "alice"

        now = admin.keys.rotate(rotated["id"], overlap_s=0)
        with governance(served, rotated["secret"]) as retired:
            refused(401, retired.whoami)
        with governance(served, now["secret"]) as current:
            assert current.whoami()["key_id"] == now["id"]

        assert admin.users.disable("alice")["disabled"] is True
        with governance(served, now["secret"]) as current:
            refused(401, current.whoami)  # every key of a disabled user
        admin.users.update("alice", disabled=False)
        with governance(served, now["secret"]) as current:
            assert current.whoami()["name"] == "alice"

        later = datetime.now(UTC) + timedelta(days=2)
        dated = admin.keys.create(user="alice", expires_at=later)
        assert dated["expires_at"].startswith(later.isoformat()[:16])
        past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
        assert refused(400, admin.keys.create, user="alice", expires_at=past).param
        both = refused(400, admin.keys.create, user="alice", expires_in_s=60, expires_at=later)
        assert both.param == "expires_in_s"


def test_key_scoping(served: str) -> None:
    with governance(served, ADMIN_KEY) as admin:
        admin.users.create("alice")
        here = admin.keys.create(user="alice", ip_allowlist=["127.0.0.0/8"], models=["gpt"])
        elsewhere = admin.keys.create(user="alice", ip_allowlist=["10.0.0.0/8"])
        inference_only = admin.keys.create(user="alice", routes=["inference"])
        weaker = admin.keys.create(user="alice", role="viewer")
        assert refused(400, admin.keys.create, user="alice", ip_allowlist=["nope"]).param
        assert refused(400, admin.keys.create, user="alice", routes=["other"]).param
    with governance(served, here["secret"]) as caller:
        assert caller.whoami()["allowed_models"] == ["gpt"]
    with governance(served, elsewhere["secret"]) as caller:
        assert refused(403, caller.whoami).code == "ip_not_allowed"
    with governance(served, inference_only["secret"]) as caller:
        assert refused(403, caller.whoami).code == "key_scope"
    with governance(served, weaker["secret"]) as caller:
        assert caller.whoami()["role"] == "viewer"


def test_who_may_manage_what(served: str) -> None:
    with governance(served, ADMIN_KEY) as admin:
        admin.users.create("dev")
        admin.users.create("other")
        admin.users.create("watcher", role="viewer")
        dev_key = admin.keys.create(user="dev")["secret"]
        viewer_key = admin.keys.create(user="watcher")["secret"]
        others = admin.keys.create(user="other")

    with governance(served, dev_key) as dev:
        own = dev.keys.create(name="second")  # no user: for yourself
        assert own["user"] == "dev" and own["secret"]
        assert {key["user"] for key in dev.keys.list()} == {"dev"}
        refused(403, dev.keys.create, user="other")
        refused(403, dev.keys.list, user="other")
        refused(403, dev.keys.get, others["id"])
        refused(403, dev.keys.revoke, others["id"])
        assert dev.keys.rotate(own["id"], overlap_s=0)["user"] == "dev"
        refused(403, dev.users.create, "mallory")
        # Above its own role (and its owner's): the key-bounds refusal, naming the field.
        assert refused(403, dev.keys.create, role="admin").param == "role"

    with governance(served, viewer_key) as viewer:
        assert refused(403, viewer.users.create, "mallory").code == "insufficient_role"
        refused(403, viewer.teams.create, "ml")
        assert viewer.whoami()["role"] == "viewer"


def test_usage(keel_home: Path, fake_openai_url: str) -> None:
    model = {
        "id": "gpt",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "api_base": fake_openai_url,
        "api_key": "sk-test",
    }
    with serve_keel(keel_settings(keel_home, [model])) as url:
        with governance(url, ADMIN_KEY) as admin:
            admin.teams.create("ml", limits={"tokens_per_day": 100_000})
            admin.users.create("alice", team="ml", limits={"usd_per_month": 10})
            key = admin.keys.create(user="alice", limits={"rpm": 5})
        with Keel(url, api_key=key["secret"]) as alice:
            alice.chat("gpt", "hello")
            rows = alice.governance.usage()
        by_scope = {(row["scope"], row["metric"], row["window"]): row for row in rows}
        requests = by_scope[(f"key:{key['id']}", "requests", "minute")]
        assert (requests["limit"], requests["used"], requests["remaining"]) == (5, 1, 4)
        assert requests["resets_at"].endswith("Z")
        assert ("user:alice", "usd", "month") in by_scope
        assert by_scope[("team:ml", "tokens", "day")]["used"] > 0

        with governance(url, ADMIN_KEY) as admin:
            team_rows = admin.usage(team="ml")
            assert [row["scope"] for row in team_rows] == ["team:ml"]
        with governance(url, key["secret"]) as own:
            assert refused(403, own.usage, team="other").code == "insufficient_role"
