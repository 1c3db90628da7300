"""Tracked runs through the Python SDK against the embedded store (no server), on SQLite and
PostgreSQL: what a run logs is what reading it gives back."""

from __future__ import annotations

import hashlib
import json
import math
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import keel
from keel.registry import Registry
from keel.registry.models import EntityRef
from keel.sdk import KeelAPIError
from keel.tracking import compare_runs, get_run, list_runs, start_run
from keel.tracking.embedded import EmbeddedTracking
from tests.tracking.run_helpers import (
    database_url,
    embedded,
    forget_default_backend,
    settings_for,
)


@pytest.fixture(params=["sqlite", "postgresql"])
def tracking(request: pytest.FixtureRequest, keel_home: Path) -> Iterator[EmbeddedTracking]:
    yield from embedded(settings_for(keel_home, database_url(request, keel_home)))


def test_a_run_records_what_it_logged(tracking: EmbeddedTracking, tmp_path: Path) -> None:
    report = tmp_path / "report.txt"
    report.write_bytes(b"precision 0.8\n")
    with start_run(
        "search-assistant",
        name="baseline",
        params={"k": 5, "temperature": 0.2, "retriever": {"kind": "bm25"}},
        tags={"team": "search"},
        client=tracking,
    ) as run:
        for step, value in enumerate([0.5, 0.25, 0.125]):
            run.log_metric("loss", value, step=step)
        run.log_metric("accuracy", 0.7)  # steps count up from 0 per key
        run.log_metric("accuracy", 0.91)
        run.log_metrics({"f1": 3, "recall": 0.5}, step=10)
        run.log_param("prompt_version", "v2")
        run.set_tag("stage", "dev")
        run.log_artifact(report)
        run.log_dict({"b": [1, 2]}, "eval/summary.json")
    assert run.status == "finished"

    found = get_run(run.id, client=tracking)
    assert (found["experiment"], found["name"], found["status"]) == (
        "search-assistant",
        "baseline",
        "finished",
    )
    assert found["params"] == {
        "k": 5,
        "prompt_version": "v2",
        "retriever": {"kind": "bm25"},
        "temperature": 0.2,
    }
    assert found["tags"] == {"stage": "dev", "team": "search"}
    assert found["metrics"]["loss"] == {
        "last": 0.125,
        "step": 2,
        "min": 0.125,
        "max": 0.5,
        "count": 3,
    }
    assert found["metrics"]["accuracy"]["last"] == 0.91
    assert found["metrics"]["accuracy"]["step"] == 1
    assert found["metrics"]["f1"] == {"last": 3.0, "step": 10, "min": 3.0, "max": 3.0, "count": 1}
    history = run.metric_history("loss")
    assert [(point["step"], point["value"]) for point in history] == [
        (0, 0.5),
        (1, 0.25),
        (2, 0.125),
    ]
    assert all(isinstance(point["timestamp_ms"], int) for point in history)

    artifacts = {artifact["name"]: artifact for artifact in found["artifacts"]}
    assert set(artifacts) == {"report.txt", "eval/summary.json"}
    assert artifacts["report.txt"]["size"] == 14
    assert artifacts["report.txt"]["sha256"] == hashlib.sha256(b"precision 0.8\n").hexdigest()
    assert tracking.download_artifact(run.id, "report.txt") == b"precision 0.8\n"
    assert json.loads(tracking.download_artifact(run.id, "eval/summary.json")) == {"b": [1, 2]}

    # Where it ran: this Python, this package set, the embedded store's local environment.
    assert found["python_version"] == platform.python_version()
    assert found["packages_digest"].startswith("sha256:")
    assert len(found["packages_digest"]) == len("sha256:") + 64
    assert found["environment"] == "local" and found["key_id"] is None
    assert found["started_at"] <= found["ended_at"]


def test_the_caller_git_commit_and_dirty_state(
    tracking: EmbeddedTracking, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()

    git("init", "-q")
    (repo / "train.py").write_text("print(1)\n")
    git("add", "train.py")
    git("commit", "-q", "-m", "first")
    head = git("rev-parse", "HEAD")
    monkeypatch.chdir(repo)

    with start_run("git", client=tracking) as clean:
        pass
    (repo / "train.py").write_text("print(2)\n")
    with start_run("git", client=tracking) as dirty:
        pass

    assert (
        get_run(clean.id, client=tracking)["git_commit"],
        get_run(clean.id, client=tracking)["git_dirty"],
    ) == (head, False)
    assert (
        get_run(dirty.id, client=tracking)["git_commit"],
        get_run(dirty.id, client=tracking)["git_dirty"],
    ) == (head, True)

    monkeypatch.chdir(tmp_path)  # not a repository
    with start_run("git", client=tracking) as outside:
        pass
    assert get_run(outside.id, client=tracking)["git_commit"] is None


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (math.nan, "not a finite number"),
        (math.inf, "not a finite number"),
        ("0.9", "is not a number"),
        (None, "is not a number"),
        (True, "is not a number"),
    ],
)
def test_a_bad_metric_is_refused_naming_it(
    tracking: EmbeddedTracking, value: object, says: str
) -> None:
    with start_run("bad-input", client=tracking) as run:
        run.log_metric("accuracy", 0.5)
        with pytest.raises(ValueError, match=f"metric 'accuracy'.*{says}"):
            run.log_metric("accuracy", value)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="step"):
            run.log_metric("accuracy", 0.6, step=1.5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="param 'when'"):
            run.log_param("when", object())
    # Nothing of the refused calls was stored.
    assert get_run(run.id, client=tracking)["metrics"]["accuracy"]["count"] == 1


def test_an_exception_in_the_block_fails_the_run(tracking: EmbeddedTracking) -> None:
    with pytest.raises(RuntimeError, match="boom"), start_run("crashes", client=tracking) as run:
        run.log_metric("loss", 1.5)
        raise RuntimeError("boom")
    found = get_run(run.id, client=tracking)
    assert found["status"] == "failed"
    assert found["error"] == "RuntimeError: boom"
    assert found["metrics"]["loss"]["last"] == 1.5  # what it logged before is kept
    with pytest.raises(RuntimeError, match="has ended"):
        run.log_metric("loss", 1.0)


def test_model_configurations_are_content_addressed_and_in_lineage(
    tracking: EmbeddedTracking,
) -> None:
    config = {"model": "gpt-4o-mini", "temperature": 0.2, "max_tokens": 256}
    same_in_another_order = {"max_tokens": 256, "temperature": 0.2, "model": "gpt-4o-mini"}
    changed = {**config, "temperature": 0.7}
    canonical = '{"max_tokens":256,"model":"gpt-4o-mini","temperature":0.2}'
    expected_digest = hashlib.sha256(canonical.encode()).hexdigest()

    with start_run("configs", client=tracking) as first:
        saved = first.log_model_config(config)
    with start_run("configs", client=tracking) as second:
        again = second.use(same_in_another_order)
        newer = second.log_model_config(changed)

    assert (saved["name"], saved["digest"], saved["version"]) == (
        "gpt-4o-mini",
        expected_digest,
        1,
    )
    assert (again["digest"], again["version"]) == (expected_digest, 1)
    assert newer["version"] == 2 and newer["digest"] != expected_digest

    inputs = get_run(second.id, client=tracking)["inputs"]
    assert sorted((found["ref"], found["version"]) for found in inputs) == sorted(
        [(expected_digest, 1), (newer["digest"], 2)]
    )
    by_version = {found["version"]: found for found in inputs}
    assert by_version[2]["config"] == changed  # enough to run it again

    registry = Registry(tracking.store.database)
    graph = registry.lineage(EntityRef("run", second.id), direction="upstream")
    upstream = {(node.entity.kind, node.entity.id, node.relation) for node in graph.upstream}
    assert upstream == {
        ("model_config", expected_digest, "used_by"),
        ("model_config", newer["digest"], "used_by"),
    }


def test_inputs_and_outputs_are_linked_into_lineage(tracking: EmbeddedTracking) -> None:
    class PromptVersion:
        kind = "prompt"
        digest = "sha256:" + "ab" * 32
        name = "support-answer"
        version = 4

    with start_run("lineage", client=tracking) as run:
        run.log_input("dataset", "sha256:" + "cd" * 32, name="qa-set", version=3)
        run.use(PromptVersion())
        run.link("evaluation", "evl_123", output=True)
    found = get_run(run.id, client=tracking)["inputs"]
    assert {(item["kind"], item["name"], item["version"], item["relation"]) for item in found} == {
        ("dataset", "qa-set", 3, "used_by"),
        ("prompt", "support-answer", 4, "used_by"),
        ("evaluation", None, None, "produced"),
    }
    graph = Registry(tracking.store.database).lineage(EntityRef("run", run.id))
    assert {(n.entity.kind, n.entity.id) for n in graph.upstream} == {
        ("dataset", "sha256:" + "cd" * 32),
        ("prompt", "sha256:" + "ab" * 32),
    }
    assert [(n.entity.kind, n.entity.id, n.relation) for n in graph.downstream] == [
        ("evaluation", "evl_123", "produced")
    ]
    with pytest.raises(ValueError, match="use\\(\\)"):
        run.use(42)


def test_list_compare_and_their_html(tracking: EmbeddedTracking) -> None:
    with start_run("compare", name="a", params={"k": 5, "model": "m1"}, client=tracking) as a:
        a.log_metric("accuracy", 0.8)
        a.set_tag("note", "<script>alert(1)</script>")
    with start_run("compare", name="b", params={"k": 5, "model": "m2"}, client=tracking) as b:
        b.log_metric("accuracy", 0.9)
        b.log_metric("latency", 120)
    with pytest.raises(RuntimeError), start_run("other", client=tracking):
        raise RuntimeError("x")

    listed = list_runs("compare", client=tracking)
    assert [run["name"] for run in listed] == ["b", "a"]  # newest first
    assert [run["name"] for run in list_runs("compare", status="finished", client=tracking)] == [
        "b",
        "a",
    ]
    assert [run["experiment"] for run in list_runs(status="failed", client=tracking)] == ["other"]
    with pytest.raises(KeelAPIError) as unknown:
        list_runs("no-such-experiment", client=tracking)
    assert unknown.value.status_code == 404

    comparison = compare_runs([a.id, b.id], client=tracking)
    assert comparison["params"] == {"k": [5, 5], "model": ["m1", "m2"]}
    assert comparison["metrics"] == {"accuracy": [0.8, 0.9], "latency": [None, 120.0]}
    assert comparison["differing_params"] == ["model"]
    assert comparison["differing_metrics"] == ["accuracy", "latency"]
    with pytest.raises(KeelAPIError) as too_few:
        compare_runs([a.id], client=tracking)
    assert (too_few.value.status_code, too_few.value.param) == (400, "ids")

    html = comparison._repr_html_()
    assert "<table" in html and "m1" in html and "m2" in html and "0.9" in html
    listed_html = listed._repr_html_()
    assert "accuracy" in listed_html and "model" in listed_html
    run_html = get_run(a.id, client=tracking)._repr_html_()
    assert "&lt;script&gt;" in run_html and "<script>" not in run_html
    assert "0.8" in a._repr_html_()
    experiments = {found["name"]: found for found in tracking.list_experiments()}
    assert experiments["compare"]["runs"] == 2 and experiments["other"]["runs"] == 1


def test_a_silent_run_is_marked_lost(keel_home: Path) -> None:
    settings = settings_for(keel_home, None, tracking={"stale_after_s": 0.2})
    for tracking in embedded(settings):
        # A process that started a run and died: nothing heartbeats for it.
        started = tracking.create_run("crashes", name=None, params={}, tags={}, provenance={})
        assert started["status"] == "running"
        time.sleep(0.5)
        found = tracking.get_run(started["id"])
        assert found["status"] == "failed"
        assert found["error"].startswith("lost: no heartbeat")
        assert found["ended_at"] == found["heartbeat_at"]


def test_keel_start_run_uses_the_embedded_store_by_default(
    keel_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forget_default_backend(monkeypatch)
    with keel.start_run(experiment="defaults", params={"k": 1}) as run:
        run.log_metric("accuracy", 0.5)
    for tracking in embedded(settings_for(keel_home, None)):
        assert tracking.get_run(run.id)["metrics"]["accuracy"]["last"] == 0.5
    assert (keel_home / "keel.db").exists()


def test_importing_keel_stays_light() -> None:
    code = (
        "import sys, keel\n"
        "assert 'keel.tracking.runs' not in sys.modules and 'sqlalchemy' not in sys.modules\n"
        "assert callable(keel.start_run)\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.stdout.strip() == "ok", result.stderr
