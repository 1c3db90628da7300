"""Eval suites end to end: the CLI with an embedded gateway over the fake upstream, scores and
costs computed by hand, resume without re-billing, the budget stop, --fail-under, --register."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keel.cli.app import app
from tests.conftest import remote_settings
from tests.evals.eval_fixtures import script, write_config, write_dataset, write_suite
from tests.fakes.openai import FakeOpenAI

runner = CliRunner()


def keel_eval(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["eval", *args])
    return result.exit_code, result.output


@pytest.fixture
def setup(
    tmp_path: Path, keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> tuple[Path, Path]:
    script(fake_openai)
    return write_suite(tmp_path), write_config(tmp_path, keel_home, fake_openai_url)


def rows_by_pair(summary: dict) -> dict[tuple[str, str], dict]:
    return {(row["model"], row["prompt"]): row for row in summary["leaderboard"]["rows"]}


def test_leaderboard_scores_costs_and_export(
    setup: tuple[Path, Path], tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    suite, config = setup
    out = tmp_path / "board.csv"
    code, output = keel_eval("run", str(suite), "-c", str(config), "--json", "-o", str(out))
    assert code == 0, output
    summary = json.loads(output)
    assert summary["planned"] == 40 and summary["new_calls"] == 40
    assert fake_openai.count() == 40
    rows = rows_by_pair(summary)
    scores = {pair: {k: v["value"] for k, v in row["scores"].items()} for pair, row in rows.items()}
    assert scores[("m-yes", "bare")] == {"exact_match": 0.7, "contains": 0.7}
    assert scores[("m-yes", "hinted")] == {"exact_match": 0.7, "contains": 0.7}
    assert scores[("m-echo", "bare")] == {"exact_match": 0.0, "contains": 0.0}
    assert scores[("m-echo", "hinted")] == {"exact_match": 0.0, "contains": 1.0}
    # Ten cases: a bootstrap interval around 0.7 (seven ones, three zeros).
    interval = rows[("m-yes", "bare")]["scores"]["exact_match"]
    assert 0.0 <= interval["ci_low"] < 0.7 < interval["ci_high"] <= 1.0
    echo = rows[("m-echo", "bare")]["scores"]["exact_match"]
    assert echo["ci_low"] == echo["ci_high"] == 0.0
    # m-yes, bare: 1 prompt word + 1 answer word at $10/$20 per 1M tokens → $30 per 1M
    # requests; hinted "qN (answer: yes)" is 3 words → (3*10 + 20) per 1M.
    yes_bare, yes_hinted = rows[("m-yes", "bare")], rows[("m-yes", "hinted")]
    assert yes_bare["cost_per_1k_requests_usd"] == pytest.approx(1000 * 30 / 1e6)
    assert yes_hinted["cost_per_1k_requests_usd"] == pytest.approx(1000 * 50 / 1e6)
    assert yes_bare["tokens_per_1k_requests"] == pytest.approx(2000)
    assert yes_bare["latency_p50_ms"] is not None
    # m-echo answers "Echo: qN" (2 words; 1*1 + 2*2 = 5 per 1M) and, hinted, "Echo: qN
    # (answer: yes)" (4 words; 3*1 + 4*2 = 11 per 1M).
    assert summary["spent_usd"] == pytest.approx(10 * (30 + 50 + 5 + 11) / 1e6)
    # The export: one CSV line per (model, prompt), best first by the first scorer.
    lines = out.read_text().splitlines()
    assert lines[0].startswith("model,prompt,prompt_version,cases,errors,exact_match,")
    assert len(lines) == 5 and lines[1].startswith("m-yes,")
    # Saved as a run, with the leaderboard's figures as metrics.
    from keel.config_loading import load_settings
    from keel.tracking import get_run
    from keel.tracking.embedded import EmbeddedTracking

    tracking = EmbeddedTracking.from_settings(load_settings(config))
    try:
        run = get_run(summary["run_id"], client=tracking)
    finally:
        tracking.close()
    assert run["experiment"] == "evals" and run["status"] == "finished"
    assert run["metrics"]["exact_match/m-yes/bare"]["last"] == 0.7
    assert run["metrics"]["contains/m-echo/hinted"]["last"] == 1.0
    assert run["tags"]["keel.kind"] == "eval"
    assert "leaderboard.json" in json.dumps(run["artifacts"])


def test_resume_never_rebills_and_budget_stops_cleanly(
    setup: tuple[Path, Path], tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    suite, config = setup
    limited = write_suite(tmp_path, budget={"max_calls": 15})
    code, output = keel_eval("run", str(limited), "-c", str(config), "--json", "--concurrency", "1")
    assert code == 3, output  # incomplete: the budget stopped it
    first = json.loads(output)
    assert first["stopped"].startswith("budget reached: max_calls 15")
    assert first["new_calls"] == 15 and first["skipped"] == 25
    assert fake_openai.count() == 15
    assert sum(row["cases"] for row in first["leaderboard"]["rows"]) == 15
    assert first["run_id"]  # the partial leaderboard is saved

    # The budget counts what one invocation spends: without it, the rest runs, and only it.
    write_suite(tmp_path)
    code, output = keel_eval("run", str(suite), "-c", str(config), "--json")
    assert code == 0, output
    second = json.loads(output)
    assert second["resumed"] == 15 and second["new_calls"] == 25
    assert fake_openai.count() == 40

    code, output = keel_eval("run", str(suite), "-c", str(config), "--json")
    third = json.loads(output)
    assert code == 0 and third["resumed"] == 40 and third["new_calls"] == 0
    assert fake_openai.count() == 40
    assert third["leaderboard"]["rows"] == second["leaderboard"]["rows"]

    # --no-resume runs everything again.
    code, output = keel_eval("run", str(suite), "-c", str(config), "--json", "--no-resume")
    assert code == 0 and json.loads(output)["new_calls"] == 40
    assert fake_openai.count() == 80


def test_fail_under_sets_the_exit_code(setup: tuple[Path, Path]) -> None:
    suite, config = setup
    code, output = keel_eval(
        "run", str(suite), "-c", str(config), "--model", "m-yes", "--fail-under", "exact_match=0.7"
    )
    assert code == 0, output
    code, output = keel_eval(
        "run", str(suite), "-c", str(config), "--model", "m-yes", "--fail-under", "exact_match=0.71"
    )
    assert code == 1
    assert "m-yes / bare: exact_match 0.7000 < 0.71" in output
    code, output = keel_eval("run", str(suite), "-c", str(config), "--fail-under", "bogus=1")
    assert code == 1 and "bogus" in output
    code, output = keel_eval("run", str(suite), "-c", str(config), "--fail-under", "exact_match")
    assert code == 1 and "SCORER=NUMBER" in output


def test_bad_input_is_reported_before_any_call(
    setup: tuple[Path, Path], tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    _, config = setup
    rows = [{"question": "q1", "expected": "yes"}, {"question": "q2"}]
    write_dataset(tmp_path, rows)
    suite = tmp_path / "suite.yaml"
    suite.write_text(suite.read_text().replace("questions.jsonl", "questions.jsonl"))
    bad = write_suite(tmp_path, dataset={"path": "questions.jsonl"})
    write_dataset(tmp_path, rows)
    code, output = keel_eval("run", str(bad), "-c", str(config))
    assert code == 1
    assert "row 2 lacks field 'expected'" in output

    write_dataset(tmp_path, [{"expected": "yes"}])
    code, output = keel_eval("run", str(bad), "-c", str(config))
    assert code == 1 and "row 1 lacks field 'question' (prompt 'bare' uses it)" in output

    bad = write_suite(tmp_path, models=["m-echo", "m-nope"])
    code, output = keel_eval("run", str(bad), "-c", str(config))
    assert code == 1 and "model 'm-nope' is not served" in output

    bad = write_suite(tmp_path, scorers=["exact_match", "no_such_scorer"])
    code, output = keel_eval("run", str(bad), "-c", str(config))
    assert code == 1 and "unknown scorer 'no_such_scorer'" in output

    bad = write_suite(tmp_path, prompts=[{"id": "x", "template": "{{ question "}])
    code, output = keel_eval("run", str(bad), "-c", str(config))
    assert code == 1 and "prompt 'x': template error" in output

    bad = write_suite(tmp_path, concurrency=0)
    code, output = keel_eval("run", str(bad), "-c", str(config))
    assert code == 1 and "concurrency" in output
    assert fake_openai.count() == 0
    assert "Traceback" not in output


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_register_writes_the_evaluation_and_lineage(
    backend: str,
    tmp_path: Path,
    keel_home: Path,
    fake_openai: FakeOpenAI,
    fake_openai_url: str,
    request: pytest.FixtureRequest,
) -> None:
    script(fake_openai)
    extra = {"database_url": request.getfixturevalue("postgres_url")} if backend != "sqlite" else {}
    config = write_config(tmp_path, keel_home, fake_openai_url, **extra)
    suite = write_suite(tmp_path)
    from keel.config_loading import load_settings
    from keel.sdk import Keel
    from keel.server import create_app
    from tests.fakes.server import serve_on_loopback

    with serve_on_loopback(create_app(load_settings(config)), lifespan="on") as url:
        with Keel(url) as keel:
            keel.registry.add({"name": "yes-bot", "type": "Generative", "description": "Says yes"})
        code, output = keel_eval(
            "run",
            str(suite),
            "--url",
            url,
            "--json",
            "--model",
            "m-yes",
            "--prompt",
            "bare",
            "--register",
            "yes-bot@1",
        )
        assert code == 0, output
        summary = json.loads(output)
        with Keel(url) as keel:
            version = keel.registry.version("yes-bot", 1)
            lineage = keel.registry.lineage("run", summary["run_id"])
            run = keel.tracking.get_run(summary["run_id"])
    evaluations = {e["metric"]: e for e in version["evaluations"]}
    assert evaluations["exact_match"]["value"] == 0.7
    assert evaluations["contains"]["value"] == 0.7
    assert evaluations["exact_match"]["run_id"] == summary["run_id"]
    dataset = evaluations["exact_match"]["dataset"]
    assert dataset.startswith("sha256:")
    text = json.dumps(lineage)
    assert dataset in text and "yes-bot@1" in text  # dataset → run → evaluation → version
    assert run["metrics"]["exact_match/m-yes/bare"]["last"] == 0.7

    code, output = keel_eval("run", str(suite), "--url", url, "--register", "yes-bot")
    assert code == 1 and "MODEL@VERSION" in output


async def test_a_sandbox_key_labels_eval_traffic(
    tmp_path: Path, keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    from keel.evals.api import arun_suite
    from keel.evals.client import CallFailed
    from keel.identity import Actor
    from tests.conftest import flushed_records, remote_settings, running_app
    from tests.evals.eval_fixtures import PRICES, ROWS, deployments, suite_dict

    script(fake_openai)
    admin_key = "test-bootstrap-admin-key-0123456789"
    settings = remote_settings(
        keel_home, deployments(fake_openai_url), prices=PRICES, auth={"admin_key": admin_key}
    )
    suite = suite_dict(models=["m-yes"], dataset={"rows": ROWS[:3]})
    async with running_app(settings) as (app, client):
        directory = app.state.keel.directory
        directory.create_user("dev", role="developer")
        admin = Actor("admin-key", frozenset({"admin"}), kind="bootstrap")
        _, secret = directory.create_key(
            "dev", name="evals", created_by=admin, environment="sandbox"
        )
        await app.state.keel.access.refresh()
        # Without a key the gateway refuses, before any upstream call.
        with pytest.raises(CallFailed, match="401"):
            await arun_suite(suite, http=client, settings=settings, save=False)
        result = await arun_suite(
            suite, http=client, api_key=secret, settings=settings, state_path=tmp_path / "s.jsonl"
        )
        records = await flushed_records(app)
    assert result.environment == "sandbox" and result.new_calls == 6
    chats = [record for record in records if record.get("model_requested") == "m-yes"]
    assert len(chats) == 6
    assert {record["environment"] for record in chats} == {"sandbox"}
    assert secret not in json.dumps(records, default=str)


async def test_stored_prompt_and_dataset_are_used_and_linked(
    tmp_path: Path, keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    from keel.evals.api import arun_suite
    from tests.conftest import running_app
    from tests.evals.eval_fixtures import PRICES, ROWS, deployments, suite_dict

    script(fake_openai)
    settings = remote_settings(keel_home, deployments(fake_openai_url), prices=PRICES)
    async with running_app(settings) as (_, client):
        created = await client.post("/v1/keel/datasets", json={"name": "yn", "rows": ROWS})
        assert created.status_code == 201, created.text
        prompt = {"name": "yn-hinted", "template": "{{ question }} (answer: {{ expected }})"}
        assert (await client.post("/v1/keel/prompts", json=prompt)).status_code == 201
        suite = suite_dict(
            models=["m-echo"],
            prompts=["yn-hinted@1", {"id": "bare", "template": "{{ question }}"}],
            dataset={"ref": "yn@1"},
        )
        result = await arun_suite(suite, http=client, settings=settings, state_path=tmp_path / "s")
        lineage = (await client.get(f"/v1/keel/lineage/run/{result.run_id}")).json()
    rows = {row.prompt: row for row in result.leaderboard.rows}
    assert rows["yn-hinted@1"].prompt_version == "yn-hinted@1"
    assert rows["yn-hinted@1"].scores["contains"].value == 1.0
    assert rows["bare"].scores["contains"].value == 0.0
    assert result.dataset_id == "yn@1" and fake_openai.count() == 20
    text = json.dumps(lineage)
    assert "yn@1" in text and "yn-hinted@1" in text


def test_a_killed_run_resumes_without_rebilling(
    setup: tuple[Path, Path], tmp_path: Path, keel_home: Path, fake_openai: FakeOpenAI
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    suite, config = setup
    fake_openai.delays["m-echo"] = 0.2  # slow enough to kill the run part-way
    state = tmp_path / "state.jsonl"
    env = {**os.environ, "KEEL_HOME": str(keel_home)}
    command = [sys.executable, "-m", "keel", "eval", "run", str(suite), "-c", str(config)]
    command += ["--state", str(state), "--concurrency", "1", "--no-save"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (state.exists() and len(state.read_text().splitlines()) >= 3):
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the run never finished a case"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    finished = sum(1 for line in state.read_text().splitlines() if line.endswith("}"))
    assert 3 <= finished < 40
    billed_before = fake_openai.count()
    fake_openai.delays.clear()

    code, output = keel_eval("run", str(suite), "-c", str(config), "--state", str(state), "--json")
    assert code == 0, output
    summary = json.loads(output)
    assert summary["resumed"] == finished and summary["new_calls"] == 40 - finished
    assert fake_openai.count() == billed_before + 40 - finished


async def test_a_plain_prompt_name_means_its_production_alias(
    tmp_path: Path, keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    from keel.evals.api import arun_suite
    from tests.conftest import running_app
    from tests.evals.eval_fixtures import PRICES, ROWS, deployments, suite_dict

    script(fake_openai)
    settings = remote_settings(keel_home, deployments(fake_openai_url), prices=PRICES)
    async with running_app(settings) as (_, client):
        created = await client.post("/v1/keel/datasets", json={"name": "yn", "rows": ROWS})
        assert created.status_code == 201, created.text
        for template in ("{{ question }} (answer: {{ expected }})", "{{ question }}"):
            prompt = {"name": "yn-p", "template": template}
            assert (await client.post("/v1/keel/prompts", json=prompt)).status_code == 201
        # Version 2 is the latest; production still points at version 1.
        moved = await client.put("/v1/keel/prompts/yn-p/aliases/production", json={"version": 1})
        assert moved.status_code == 200, moved.text
        suite = suite_dict(models=["m-echo"], prompts=["yn-p"], dataset={"ref": "yn@1"})
        result = await arun_suite(suite, http=client, settings=settings, state_path=tmp_path / "s")
    assert [row.prompt_version for row in result.leaderboard.rows] == ["yn-p@1"]
