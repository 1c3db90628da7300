"""`keel users|teams|orgs|keys|usage|whoami` against a real Keel server that requires keys."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from keel.cli.app import app
from keel.cli.governance_shared import parse_duration
from keel.cli.key_commands import STORE_IT, usage_bar
from tests.governance.test_governance_sdk import ADMIN_KEY, keel_settings, serve_keel


@pytest.fixture
def served(keel_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with serve_keel(keel_settings(keel_home)) as url:
        monkeypatch.setenv("KEEL_URL", url)
        monkeypatch.setenv("COLUMNS", "250")  # Rich tables: no wrapped ids
        yield url


def keel(*args: str, key: str | None = ADMIN_KEY) -> Any:
    """Run `keel ARGS`, as the bootstrap admin unless `key` says otherwise (None: no key)."""
    env = {"KEEL_API_KEY": key} if key is not None else {}
    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


def ok(*args: str, key: str | None = ADMIN_KEY) -> str:
    result = keel(*args, key=key)
    assert result.exit_code == 0, result.output
    output: str = result.output
    return output


def loaded(*args: str, key: str | None = ADMIN_KEY) -> Any:
    return json.loads(keel(*args, "--json", key=key).stdout)


def failed(*args: str, key: str | None = ADMIN_KEY) -> str:
    result = keel(*args, key=key)
    assert result.exit_code != 0, result.output
    output: str = result.output
    return output


def test_parse_duration() -> None:
    assert [parse_duration(text) for text in ("30d", "12h", "90m", "3600", "45s", "2w")] == [
        30 * 86400,
        12 * 3600,
        90 * 60,
        3600,
        45,
        14 * 86400,
    ]
    assert parse_duration(" 5H ") == 5 * 3600
    for bad in ("", "d", "1.5h", "-3h", "10y", "3 days", "1h30m"):
        with pytest.raises(ValueError, match="is not a duration"):
            parse_duration(bad)


def test_usage_bar() -> None:
    assert usage_bar(1, 4, width=8).plain == "██░░░░░░  25%"
    assert usage_bar(9, 4, width=4).plain == "████ 100%"
    assert usage_bar(0, 0, width=4).plain == "████ 100%"  # a zero limit admits nothing


def test_directory_commands(served: str) -> None:
    assert "created organization acme" in ok("orgs", "create", "acme")
    assert "acme" in ok("orgs", "list")
    assert "created team ml in acme" in ok(
        "teams", "create", "ml", "--org", "acme", "--allowed-region", "eu-west-1", "--rpm", "60"
    )
    team = loaded("teams", "show", "ml")
    assert (team["allowed_regions"], team["limits"]) == (["eu-west-1"], {"rpm": 60})
    shown = ok("teams", "show", "ml")
    assert "eu-west-1" in shown and "rpm=60" in shown

    # Limits not named are kept; regions replaced, then the policy removed.
    ok("teams", "update", "ml", "--usd-per-day", "2.5", "--allowed-region", "eu-central-1")
    team = loaded("teams", "show", "ml")
    assert team["limits"] == {"rpm": 60, "usd_per_day": 2.5}
    assert team["allowed_regions"] == ["eu-central-1"]
    assert "any (no policy)" in ok("teams", "update", "ml", "--no-region-policy")
    assert loaded("teams", "show", "ml")["limits"] == {"rpm": 60, "usd_per_day": 2.5}
    ok("teams", "update", "ml", "--clear-limits", "--tpm", "1000")
    assert loaded("teams", "show", "ml")["limits"] == {"tpm": 1000}
    assert "--no-region-policy" in failed(
        "teams", "update", "ml", "--no-region-policy", "--allowed-region", "x"
    )
    assert "nothing to change" in failed("teams", "update", "ml")
    assert "ml" in ok("teams", "list")

    assert "created user alice (developer) in team ml" in ok(
        "users", "create", "alice", "--team", "ml", "--email", "alice@example.com"
    )
    assert "created service account ci-bot (viewer)" in ok(
        "users", "create", "ci-bot", "--kind", "service_account", "--role", "viewer"
    )
    assert "--kind: 'robot'" in failed("users", "create", "r2", "--kind", "robot")
    assert "--role: 'owner'" in failed("users", "create", "r2", "--role", "owner")
    bots = loaded("users", "list", "--kind", "service_account")
    assert [user["name"] for user in bots] == ["ci-bot"]
    listed = ok("users", "list", "--team", "ml")
    assert "alice" in listed and "ci-bot" not in listed

    ok("users", "update", "alice", "--role", "maintainer", "--rpm", "10")
    alice = loaded("users", "show", "alice")
    assert (alice["role"], alice["team"], alice["limits"]) == ("maintainer", "ml", {"rpm": 10})
    assert re.search(r"^team +-$", ok("users", "update", "alice", "--no-team"), re.M)
    assert loaded("users", "show", "alice")["team"] is None
    assert "--no-team" in failed("users", "update", "alice", "--no-team", "--team", "ml")

    assert "disabled ci-bot" in ok("users", "disable", "ci-bot")
    assert loaded("users", "show", "ci-bot")["disabled"] is True
    ok("users", "update", "ci-bot", "--enable")
    assert loaded("users", "show", "ci-bot")["disabled"] is False

    # Server errors name the field; a missing server says how to start one.
    assert "already exists" in failed("teams", "create", "ml")
    assert "does not exist" in failed("users", "update", "alice", "--team", "nowhere")
    assert "(field: name)" in failed("users", "create", "bad name")
    assert "Is the server running?" in failed("whoami", "--url", "http://127.0.0.1:9")


def test_keys_and_whoami(served: str) -> None:
    ok("teams", "create", "ml")
    ok("users", "create", "alice", "--team", "ml")
    assert re.search(r"^auth +required$", ok("whoami"), re.M)

    created = ok(
        "keys",
        "create",
        "--user",
        "alice",
        "--name",
        "laptop",
        "--environment",
        "sandbox",
        "--expires-in",
        "30d",
        "--model",
        "gpt",
        "--model",
        "claude",
        "--ip",
        "127.0.0.1",
        "--rpm",
        "5",
    )
    secret = next(line.split()[1] for line in created.splitlines() if line.startswith("secret:"))
    assert secret.startswith("keel_sb_")
    assert created.count(secret) == 1 and STORE_IT in created
    key_id = created.split()[2]
    assert key_id.startswith("key_") and "expires" in created

    me = loaded("whoami", key=secret)
    assert (me["name"], me["role"], me["team"]) == ("alice", "developer", "ml")
    assert (me["key_id"], me["environment"]) == (key_id, "sandbox")
    assert me["allowed_models"] == ["claude", "gpt"]
    shown_me = ok("whoami", key=secret)
    assert "environment  sandbox" in shown_me and "claude, gpt" in shown_me
    assert ok("whoami", "--api-key", secret, key=None).count("alice") == 1

    # No other command shows the secret.
    for args in (
        ("keys", "list"),
        ("keys", "list", "--json"),
        ("keys", "list", "--user", "alice"),
        ("keys", "show", key_id),
        ("keys", "show", key_id, "--json"),
        ("whoami", "--json"),
    ):
        output = ok(*args, key=secret)
        assert secret not in output and "secret" not in output
        assert key_id in output
    shown = ok("keys", "show", key_id)
    assert "127.0.0.1/32" in shown and "rpm=5" in shown and "sandbox" in shown

    ok("keys", "create", "--user", "alice", "--name", "[red]ci[/]")  # printed as itself
    assert "[red]ci[/]" in ok("keys", "list", "--user", "alice")
    full = loaded("keys", "create", "--user", "alice", "--route", "inference")
    assert full["secret"].startswith("keel_sk_") and full["routes"] == ["inference"]

    # Rotation: both work during the overlap; with --overlap 0 the old one stops at once.
    rotated = ok("keys", "rotate", key_id, "--overlap", "2h")
    new_secret = rotated.split("secret: ")[1].split()[0]
    assert f"rotated {key_id} -> key_" in rotated and "keeps working until" in rotated
    assert STORE_IT in rotated and rotated.count(new_secret) == 1
    assert loaded("whoami", key=secret)["name"] == "alice"
    new_id = loaded("whoami", key=new_secret)["key_id"]
    assert new_id != key_id
    stopped = ok("keys", "rotate", new_id, "--overlap", "0", key=new_secret)
    assert "stops working now" in stopped
    assert "401" in failed("whoami", key=new_secret)
    newest = stopped.split("secret: ")[1].split()[0]
    assert loaded("whoami", key=newest)["name"] == "alice"

    as_json = loaded("keys", "rotate", full["id"], "--overlap", "0")
    assert as_json["secret"].startswith("keel_sk_") and as_json["previous"]["id"] == full["id"]

    # Revoked keys are refused.
    assert f"revoked {key_id}" in ok("keys", "revoke", key_id)
    assert "401" in failed("whoami", key=secret)
    assert loaded("keys", "show", key_id)["status"] == "revoked"


def test_key_option_errors(served: str) -> None:
    for value in ("soon", "1.5d", "-1h", "10y"):
        error = failed("keys", "create", "--expires-in", value)
        assert "--expires-in" in error and "is not a duration" in error
    assert "--expires-in: must be at least 1 second" in failed(
        "keys", "create", "--expires-in", "0"
    )
    assert "--overlap" in failed("keys", "rotate", "key_x", "--overlap", "an hour")
    assert "--expires-in: can't be combined" in failed(
        "keys", "create", "--expires-in", "1h", "--expires-at", "2099-01-01T00:00:00"
    )
    assert "--environment: 'staging'" in failed("keys", "create", "--environment", "staging")
    assert "--route: 'admin'" in failed("keys", "create", "--route", "admin")
    ok("users", "create", "alice")
    bad_ip = failed("keys", "create", "--user", "alice", "--ip", "not-an-ip")
    assert "(field: ip_allowlist)" in bad_ip


def test_permissions_through_the_cli(served: str) -> None:
    ok("users", "create", "dev")
    ok("users", "create", "other")
    ok("users", "create", "watcher", "--role", "viewer")
    dev = loaded("keys", "create", "--user", "dev")["secret"]
    viewer = loaded("keys", "create", "--user", "watcher")["secret"]

    own = ok("keys", "create", "--name", "mine", key=dev)
    assert "for dev" in own and STORE_IT in own
    refused = failed("keys", "create", "--user", "other", key=dev)
    assert "403" in refused and "other" in refused
    assert "403" in failed("users", "create", "mallory", key=viewer)
    assert "403" in failed("users", "create", "mallory", key=dev)
    assert "401" in failed("whoami", key=None)
    assert "401" in failed("whoami", key="keel_sk_not-a-real-key")


def test_usage_command(
    keel_home: Path, fake_openai_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = {
        "id": "gpt",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "api_base": fake_openai_url,
        "api_key": "sk-test",
    }
    monkeypatch.setenv("COLUMNS", "250")
    with serve_keel(keel_settings(keel_home, [model])) as url:
        monkeypatch.setenv("KEEL_URL", url)
        ok("teams", "create", "ml", "--tokens-per-day", "100000", "--usd-per-day", "3")
        ok("users", "create", "alice", "--team", "ml")
        secret = loaded("keys", "create", "--user", "alice", "--rpm", "4")["secret"]
        assert "No limits apply" in ok("usage", "--user", "alice")
        ok("chat", "hello", "--model", "gpt", key=secret)

        table = ok("usage", key=secret)
        assert "requests / minute" in table and "tokens / day" in table
        assert "usd / day" in table and "$3" in table
        assert "███░░░░░░░░░  25%" in table  # 1 of 4 requests this minute
        rows = loaded("usage", key=secret)
        requests = next(row for row in rows if row["metric"] == "requests")
        assert (requests["used"], requests["remaining"]) == (1, 3)
        team_only = loaded("usage", "--team", "ml")
        assert {row["scope"] for row in team_only} == {"team:ml"}
        assert "403" in failed("usage", "--team", "other", key=secret)
