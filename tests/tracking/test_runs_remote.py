"""Tracked runs against a real Keel server on loopback (lifespan on), SQLite and PostgreSQL:
the SDK's Run writes over REST, REST reads it back, and bad input is a 4xx naming the field."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import keel
from keel.sdk import Keel, KeelAPIError
from keel.tracking import compare_runs, get_run, start_run
from tests.tracking.run_helpers import (
    ADMIN_KEY,
    database_url,
    forget_default_backend,
    serve_keel,
    settings_for,
)


@pytest.fixture(params=["sqlite", "postgresql"])
def served(request: pytest.FixtureRequest, keel_home: Path) -> Iterator[str]:
    with serve_keel(settings_for(keel_home, database_url(request, keel_home))) as url:
        yield url


def test_a_remote_run_end_to_end(served: str, tmp_path: Path) -> None:
    notes = tmp_path / "notes.md"
    notes.write_text("# findings\n")
    with Keel(served) as client:
        with start_run(
            "search-assistant", params={"k": 5}, tags={"team": "search"}, client=client
        ) as run:
            for step in range(2000):
                run.log_metric("loss", 1.0 / (step + 1), step=step)
            run.log_metric("accuracy", 0.91, step=3)
            run.log_params({"retriever": "bm25", "k": 8})  # the latest value wins
            run.log_artifact(notes)
            config = run.log_model_config({"model": "m", "temperature": 0})
            run.log_input("dataset", "sha256:" + "ef" * 32, name="qa", version=2)

        # REST sees what the SDK logged.
        found = httpx.get(f"{served}/v1/keel/runs/{run.id}").json()
        assert found["status"] == "finished"
        assert found["params"] == {"k": 8, "retriever": "bm25"}
        assert found["tags"] == {"team": "search"}
        assert found["metrics"]["loss"]["count"] == 2000
        assert found["metrics"]["loss"]["last"] == 1.0 / 2000
        assert found["metrics"]["loss"]["min"] == 1.0 / 2000
        assert found["metrics"]["accuracy"]["last"] == 0.91
        assert found["environment"] == "local"  # open mode: the one local user

        history = httpx.get(
            f"{served}/v1/keel/runs/{run.id}/metrics", params={"key": "loss"}
        ).json()["data"]
        assert [point["step"] for point in history] == list(range(2000))
        assert history[9]["value"] == 1.0 / 10

        downloaded = httpx.get(f"{served}/v1/keel/runs/{run.id}/artifacts/notes.md")
        assert downloaded.content == b"# findings\n"
        assert client.tracking.download_artifact(run.id, "notes.md") == b"# findings\n"
        assert found["artifacts"][0]["sha256"] == hashlib.sha256(b"# findings\n").hexdigest()

        lineage = httpx.get(f"{served}/v1/keel/lineage/run/{run.id}").json()
        assert {(n["entity"]["kind"], n["entity"]["id"]) for n in lineage["upstream"]} == {
            ("model_config", config["digest"]),
            ("dataset", "sha256:" + "ef" * 32),
        }

        with start_run("search-assistant", params={"k": 3}, client=client) as other:
            other.log_metric("accuracy", 0.85)
        comparison = compare_runs([run.id, other.id], client=client)
        assert comparison["params"]["k"] == [8, 3]
        assert comparison["metrics"]["accuracy"] == [0.91, 0.85]
        assert "k" in comparison["differing_params"]
        listed = client.tracking.runs("search-assistant")
        assert [found["id"] for found in listed] == [other.id, run.id]
        assert client.tracking.experiments()[0]["runs"] == 2


def test_keel_base_url_sends_runs_to_the_server(
    served: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    forget_default_backend(monkeypatch)
    monkeypatch.setenv("KEEL_BASE_URL", served)
    with keel.start_run(experiment="env-configured") as run:
        run.log_metric("accuracy", 0.5)
    assert get_run(run.id)["metrics"]["accuracy"]["last"] == 0.5
    assert httpx.get(f"{served}/v1/keel/runs/{run.id}").json()["experiment"] == "env-configured"


def _error(response: httpx.Response) -> dict[str, object]:
    error: dict[str, object] = response.json()["error"]
    return error


def test_bad_input_is_a_4xx_naming_the_field(served: str) -> None:
    runs = f"{served}/v1/keel/runs"
    created = httpx.post(runs, json={"experiment": "bad-input"})
    assert created.status_code == 201
    run_id = created.json()["id"]
    log = f"{runs}/{run_id}/log"

    # NaN is not JSON, but Python's encoder writes it: refused, naming the field.
    nan = httpx.post(
        log,
        content=b'{"metrics": [{"key": "accuracy", "value": NaN}]}',
        headers={"content-type": "application/json"},
    )
    assert nan.status_code == 400
    assert _error(nan)["param"] == "metrics.0.value"
    assert "finite" in str(_error(nan)["message"])

    for body, param in (
        ({"metrics": [{"key": "accuracy", "value": "0.9"}]}, "metrics.0.value"),
        ({"metrics": [{"key": "a", "value": 1}, {"key": "b", "value": True}]}, "metrics.1.value"),
        ({"metrics": [{"key": "", "value": 1}]}, "metrics.0.key"),
        ({"metrics": [{"value": 1}]}, "metrics.0.key"),
        ({"metrics": [{"key": "a", "value": 1, "step": "3"}]}, "metrics.0.step"),
        ({"metrics": [{"key": "a", "value": 1, "color": "red"}]}, "metrics.0.color"),
        ({"params": {"": 1}}, "params"),
    ):
        response = httpx.post(log, json=body)
        assert response.status_code == 400, body
        assert _error(response)["param"] == param, (body, response.json())

    assert (
        httpx.post(log, content=b"{", headers={"content-type": "application/json"}).json()["error"][
            "code"
        ]
        == "invalid_json"
    )
    assert httpx.post(f"{runs}/run_nope/log", json={}).status_code == 404
    assert httpx.get(f"{runs}/run_nope").status_code == 404
    assert httpx.post(runs, json={"experiment": ""}).status_code == 400
    bad_status = httpx.post(f"{runs}/{run_id}/finish", json={"status": "done"})
    assert (bad_status.status_code, _error(bad_status)["param"]) == (400, "status")
    escape = httpx.post(
        f"{runs}/{run_id}/artifacts",
        json={"name": "../escape.txt", "content_base64": base64.b64encode(b"x").decode()},
    )
    assert (escape.status_code, _error(escape)["param"]) == (400, "name")
    not_base64 = httpx.post(
        f"{runs}/{run_id}/artifacts", json={"name": "a.txt", "content_base64": "%%%"}
    )
    assert (not_base64.status_code, _error(not_base64)["param"]) == (400, "content_base64")
    assert httpx.get(f"{runs}/{run_id}/artifacts/missing.txt").status_code == 404
    one = httpx.get(f"{runs}/compare", params={"ids": run_id})
    assert one.status_code == 400
    assert httpx.get(runs, params={"status": "sleeping"}).status_code == 400

    ok = httpx.post(log, json={"metrics": [{"key": "accuracy", "value": 1}]})
    assert ok.json()["accepted"] == 1
    assert httpx.post(f"{runs}/{run_id}/finish", json={}).json()["status"] == "finished"
    late = httpx.post(log, json={"metrics": [{"key": "accuracy", "value": 1}]})
    assert late.status_code == 409
    # Only the valid point was stored.
    assert httpx.get(f"{runs}/{run_id}").json()["metrics"]["accuracy"]["count"] == 1

    # The SDK refuses NaN itself, before anything is sent.
    with (
        Keel(served) as client,
        start_run("bad-input", client=client) as run,
        pytest.raises(ValueError, match="metric 'accuracy'"),
    ):
        run.log_metric("accuracy", float("nan"))


def test_runs_record_the_key_and_its_environment(keel_home: Path) -> None:
    settings = settings_for(keel_home, None, auth={"admin_key": ADMIN_KEY})
    with serve_keel(settings) as url, Keel(url, api_key=ADMIN_KEY) as admin:
        admin.governance.users.create("alice", role="developer")
        admin.governance.users.create("victor", role="viewer")
        sandbox = admin.governance.keys.create(user="alice", environment="sandbox")
        production = admin.governance.keys.create(user="alice", environment="production")
        viewer = admin.governance.keys.create(user="victor", environment="sandbox")

        ids = {}
        for key in (sandbox, production):
            with Keel(url, api_key=key["secret"]) as client:
                with start_run("keys", client=client) as run:
                    run.log_metric("accuracy", 0.5)
                ids[key["environment"]] = run.id
        for environment, run_id in ids.items():
            found = admin.tracking.run(run_id)
            assert found["environment"] == environment
            assert found["created_by"] == "alice"
        assert admin.tracking.run(ids["sandbox"])["key_id"] == sandbox["id"]
        assert admin.tracking.run(ids["production"])["key_id"] == production["id"]
        # A production run is allowed, and labelled as one where runs are shown.
        assert "production" in admin.tracking.runs("keys")._repr_html_()

        with Keel(url, api_key=viewer["secret"]) as as_viewer:
            assert len(as_viewer.tracking.runs("keys")) == 2  # viewers read
            with pytest.raises(KeelAPIError) as refused:
                start_run("keys", client=as_viewer)
            assert refused.value.status_code == 403  # and do not write
        with pytest.raises(KeelAPIError) as anonymous, Keel(url) as nobody:
            nobody.tracking.runs()
        assert anonymous.value.status_code == 401
