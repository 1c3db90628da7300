"""Alert rules over REST, the Python SDK and the CLI against a real server: create, list,
get, disable, enable, delete; keel.yaml rules listed but not deletable; bad rules and bad
notifier settings refused naming the field."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from keel.cli.app import app as cli
from keel.config import Settings
from keel.config_loading import load_settings
from keel.errors import ConfigError
from keel.sdk import Keel, KeelAPIError
from keel.server import create_app
from tests.conftest import remote_settings, running_app
from tests.fakes.server import serve_on_loopback

CONFIG_RULE = {"name": "yaml-latency", "metric": "latency_p95_seconds", "threshold": 2}
HOOK = {"name": "ops-slack", "type": "slack", "url": "https://hooks.example.com/services/T/B/x"}


@pytest.fixture(params=["sqlite", "postgresql"])
def served(
    request: pytest.FixtureRequest, keel_home: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    database_url = request.getfixturevalue("postgres_url") if request.param != "sqlite" else None
    yield from _serve(keel_home, monkeypatch, database_url)


@pytest.fixture
def served_sqlite(keel_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    yield from _serve(keel_home, monkeypatch, None)


def _serve(
    keel_home: Path, monkeypatch: pytest.MonkeyPatch, database_url: str | None
) -> Iterator[str]:
    extra: dict[str, Any] = {"database_url": database_url} if database_url else {}
    settings = remote_settings(
        keel_home,
        [],
        alerts={"enabled": False, "rules": [CONFIG_RULE], "notifiers": [HOOK]},
        **extra,
    )
    with serve_on_loopback(create_app(settings), lifespan="on") as url:
        monkeypatch.setenv("KEEL_URL", url)
        monkeypatch.setenv("COLUMNS", "250")
        yield url


def refused(status: int, call: Any, *args: Any, **kwargs: Any) -> KeelAPIError:
    with pytest.raises(KeelAPIError) as caught:
        call(*args, **kwargs)
    assert caught.value.status_code == status, caught.value
    return caught.value


def test_rules_through_the_sdk(served: str) -> None:
    with Keel(served) as keel:
        created = keel.alerts.rules.create(
            name="errors-high",
            metric="error_rate",
            threshold=0.05,
            window="10m",
            for_="2m",
            severity="critical",
            model="gpt-x",
            notifiers=["ops-slack"],
        )
        assert created["source"] == "api"
        assert (created["window"], created["for"], created["created_by"]) == (600, 120, "local")
        names = [(rule["name"], rule["source"]) for rule in keel.alerts.rules.list()]
        assert names == [("errors-high", "api"), ("yaml-latency", "config")]
        assert keel.alerts.rules.get("errors-high")["threshold"] == 0.05

        states = {s["rule"]: s for s in keel.alerts.list()}
        assert {name: s["state"] for name, s in states.items()} == {
            "errors-high": "inactive",
            "yaml-latency": "inactive",
        }
        assert keel.alerts.list(state="firing") == []
        assert keel.alerts.history() == [] and keel.alerts.deliveries() == []

        assert keel.alerts.rules.disable("errors-high")["enabled"] is False
        assert {s["rule"]: s["enabled"] for s in keel.alerts.list()}["errors-high"] is False
        assert keel.alerts.rules.enable("errors-high")["enabled"] is True

        assert (
            refused(
                409,
                keel.alerts.rules.create,
                name="errors-high",
                metric="request_count",
                threshold=1,
            ).param
            == "name"
        )
        assert (
            refused(
                409,
                keel.alerts.rules.create,
                name="yaml-latency",
                metric="request_count",
                threshold=1,
            ).param
            == "name"
        )
        refused(409, keel.alerts.rules.delete, "yaml-latency")
        refused(409, keel.alerts.rules.disable, "yaml-latency")

        assert keel.alerts.rules.delete("errors-high") == {
            "object": "alert_rule",
            "name": "errors-high",
            "deleted": True,
        }
        refused(404, keel.alerts.rules.get, "errors-high")
        refused(404, keel.alerts.rules.delete, "errors-high")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"metric": "error_ratio"}, "metric"),
        ({"metric": "drift"}, "metric"),
        ({"for": "5 minutes"}, "for"),
        ({"for": "-1"}, "for"),
        ({"window": "0s"}, "window"),
        ({"window": True}, "window"),
        ({"op": "=="}, "op"),
        ({"severity": "page"}, "severity"),
        ({"condition": "spike"}, "condition"),
        ({"name": "has space"}, "name"),
        ({"threshold": None}, "threshold"),
        ({"notifiers": ["pager"]}, "notifiers"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_rules_are_refused_naming_the_field(
    served_sqlite: str, body: dict[str, Any], param: str
) -> None:
    rule = {"name": "bad-rule", "metric": "error_rate", "threshold": 0.1, **body}
    with Keel(served_sqlite) as keel:
        error = refused(400, keel.alerts.rules.create, rule)
        assert error.param == param, error
        assert error.error_type == "invalid_request_error"
        assert keel.alerts.rules.list() == [keel.alerts.rules.get("yaml-latency")]


def test_per_model_metrics_need_a_model(served_sqlite: str) -> None:
    with Keel(served_sqlite) as keel:
        for metric in ("quality_accuracy", "drift_detected", "drift.psi"):
            error = refused(400, keel.alerts.rules.create, name="q", metric=metric, threshold=0.5)
            assert "model" in error.message
        error = refused(
            400,
            keel.alerts.rules.create,
            name="q",
            metric="drift.psi",
            threshold=0.5,
            model="m",
            condition="anomaly",
        )
        assert "condition" in error.message


def _keel(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_rules_through_the_cli(served: str, tmp_path: Path) -> None:
    result = _keel(
        "alerts",
        "rules",
        "add",
        "slow-answers",
        "--metric",
        "latency_p99_seconds",
        "--threshold",
        "4",
        "--window",
        "15m",
        "--for",
        "5m",
        "--model",
        "gpt-x",
    )
    assert result.exit_code == 0, result.output
    assert "created alert rule slow-answers" in result.output
    rule_file = tmp_path / "rule.yaml"
    rule_file.write_text("metric: cost_usd\nthreshold: 25\nwindow: 1h\ncondition: anomaly\n")
    result = _keel("alerts", "rules", "add", "spend-anomaly", "--file", str(rule_file))
    assert result.exit_code == 0, result.output

    listed = json.loads(_keel("alerts", "rules", "list", "--json").stdout)
    assert [(r["name"], r["window"], r["for"]) for r in listed] == [
        ("slow-answers", 900, 300),
        ("spend-anomaly", 3600, 0),
        ("yaml-latency", 300, 0),
    ]
    table = _keel("alerts", "rules", "list").output
    assert "slow-answers" in table and "latency_p99_seconds" in table and "config" in table
    states = _keel("alerts", "list").output
    assert "spend-anomaly" in states and "inactive" in states

    bad = _keel("alerts", "rules", "add", "x", "--metric", "latency_p95", "--threshold", "1")
    assert bad.exit_code == 1
    assert "field: metric" in bad.output and "latency_p95_seconds" in bad.output
    bad = _keel(
        "alerts", "rules", "add", "x", "--metric", "error_rate", "--threshold", "1", "--for", "soon"
    )
    assert bad.exit_code == 1 and "field: for" in bad.output

    assert _keel("alerts", "rules", "disable", "slow-answers").exit_code == 0
    assert _keel("alerts", "rules", "delete", "slow-answers").exit_code == 0
    gone = _keel("alerts", "rules", "show", "slow-answers")
    assert gone.exit_code == 1 and "not found" in gone.output
    assert json.loads(_keel("alerts", "history", "--json").stdout) == []
    assert json.loads(_keel("alerts", "deliveries", "--json").stdout) == []


def _invalid(alerts: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        Settings.model_validate({"alerts": alerts})
    return str(caught.value)


def test_bad_alert_settings_are_refused() -> None:
    ftp = {**HOOK, "url": "ftp://hooks.example.com/x"}
    assert "is not an http(s) URL" in _invalid({"notifiers": [ftp]})
    jira = {
        "name": "j",
        "type": "jira",
        "url": "file:///etc/passwd",
        "email": "a@b.c",
        "api_token_env": "T",
        "project": "OPS",
    }
    assert "alerts.notifiers.0.jira.url" in _invalid({"notifiers": [jira]})
    assert "unknown notifier" in _invalid(
        {"rules": [{**CONFIG_RULE, "notifiers": ["nope"]}], "notifiers": [HOOK]}
    )
    assert "unknown metric" in _invalid({"rules": [{**CONFIG_RULE, "metric": "p95"}]})
    assert "lease_ttl_s" in _invalid({"evaluation_interval_s": 60, "lease_ttl_s": 30})


def test_keel_yaml_alerts_section(tmp_path: Path) -> None:
    config = tmp_path / "keel.yaml"
    config.write_text(
        "alerts:\n"
        "  evaluation_interval_s: 15\n"
        "  rules:\n"
        "    - name: errors-high\n"
        "      metric: error_rate\n"
        "      threshold: 0.05\n"
        "      for: 2m\n"
        "  notifiers:\n"
        "    - {name: hook, type: webhook, url: 'gopher://x', secret_env: HOOK_SECRET}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert "alerts.notifiers" in caught.value.message and "url" in caught.value.message


async def test_a_notifier_secret_must_be_in_the_environment(keel_home: Path) -> None:
    hook = {
        "name": "hook",
        "type": "webhook",
        "url": "https://x.example.com",
        "secret_env": "ALERTS_TEST_UNSET_SECRET",
    }
    settings = remote_settings(keel_home, [], alerts={"notifiers": [hook]})
    with pytest.raises(ConfigError) as caught:
        async with running_app(settings):
            pass
    assert caught.value.message == (
        "alerts.notifiers.hook.secret_env: environment variable ALERTS_TEST_UNSET_SECRET is not set"
    )
