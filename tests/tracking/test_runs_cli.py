"""`keel runs list|show|compare` and `keel experiments list`, on the embedded store and
against a server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keel.cli import app
from keel.sdk import Keel
from keel.tracking import start_run
from keel.tracking.embedded import EmbeddedTracking
from tests.tracking.run_helpers import embedded, serve_keel, settings_for

runner = CliRunner()


def _invoke(*args: str) -> str:
    result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def tracking(keel_home: Path) -> EmbeddedTracking:
    return next(embedded(settings_for(keel_home, None)))


def _two_runs(client: object) -> tuple[str, str]:
    with start_run("cli", name="small", params={"k": 3, "model": "m"}, client=client) as a:
        a.log_metric("accuracy", 0.75)
    with start_run("cli", name="large", params={"k": 9, "model": "m"}, client=client) as b:
        b.log_metric("accuracy", 0.875)
        b.log_dict({"ok": True}, "summary.json")
    return a.id, b.id


def test_the_commands_read_the_embedded_store(tracking: EmbeddedTracking) -> None:
    first, second = _two_runs(tracking)

    listed = _invoke("runs", "list")
    assert first in listed and second in listed and "0.875" in listed and "local" in listed
    as_json = json.loads(_invoke("runs", "list", "--experiment", "cli", "--json"))
    assert [run["id"] for run in as_json] == [second, first]

    shown = _invoke("runs", "show", second)
    assert "large" in shown and "summary.json" in shown and "0.875" in shown
    assert json.loads(_invoke("runs", "show", second, "--json"))["params"] == {"k": 9, "model": "m"}

    compared = _invoke("runs", "compare", first, second)
    assert "small" in compared and "large" in compared
    assert "0.75" in compared and "0.875" in compared and "accuracy (metric)" in compared
    only_diff = _invoke("runs", "compare", first, second, "--diff")
    assert "k" in only_diff and "model" not in only_diff.replace("(metric)", "")
    diff_json = json.loads(_invoke("runs", "compare", first, second, "--json"))
    assert diff_json["differing_params"] == ["k"]

    experiments = _invoke("experiments", "list")
    assert "cli" in experiments and "2" in experiments


def test_the_commands_ask_a_server(keel_home: Path) -> None:
    with serve_keel(settings_for(keel_home / "server", None)) as url, Keel(url) as client:
        first, second = _two_runs(client)
        listed = json.loads(_invoke("runs", "list", "--url", url, "--json"))
        assert {run["id"] for run in listed} == {first, second}
        shown = _invoke("runs", "compare", first, second, "--url", url)
        assert "0.875" in shown
        assert json.loads(_invoke("experiments", "list", "--url", url, "--json"))[0]["runs"] == 2


def test_mistakes_are_one_line_naming_the_problem(tracking: EmbeddedTracking) -> None:
    missing = runner.invoke(app, ["runs", "show", "run_missing"])
    assert missing.exit_code == 1 and "no run run_missing" in missing.output
    single = runner.invoke(app, ["runs", "compare", "run_a"])
    assert single.exit_code == 1 and "at least two" in single.output
    status = runner.invoke(app, ["runs", "list", "--status", "sleeping"])
    assert status.exit_code == 1 and "status" in status.output
    assert "Traceback" not in missing.output + single.output + status.output
