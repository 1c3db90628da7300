"""Feedback and quality through the Python SDK and the CLI, against a real Keel server on a
loopback port."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from keel.cli.app import app as cli
from keel.sdk import Keel, KeelAPIError
from keel.server import create_app
from tests.conftest import remote_settings
from tests.fakes.server import serve_on_loopback
from tests.monitoring.feedback_helpers import MODEL


@pytest.fixture
def server_url(tmp_path: Path, fake_openai_url: str) -> Iterator[str]:
    models = [{"id": MODEL, "provider": "openai", "api_base": fake_openai_url, "api_key": "sk-up"}]
    app = create_app(remote_settings(tmp_path, models))
    with serve_on_loopback(app, lifespan="on") as url:
        yield url


def _request_id(url: str) -> str:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(f"{url}/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.headers["x-keel-request-id"]


def test_sdk_feedback_list_and_quality(server_url: str) -> None:
    request_id = _request_id(server_url)
    with Keel(server_url) as keel:
        first = keel.feedback(request_id, thumbs="down", comment="too long")
        assert (first["replaced"], first["thumbs"], first["comment"]) == (False, "down", "too long")
        again = keel.feedback(request_id, thumbs="up")
        assert (again["replaced"], again["thumbs"], again["comment"]) == (True, "up", None)
        keel.feedback(request_id, label="b", expected="a", source="llm_judge", name="topic")
        rows = keel.feedback.list(request_id)
        assert [(row["source"], row["name"]) for row in rows] == [
            ("human", "default"),
            ("llm_judge", "topic"),
        ]
        report = keel.quality(MODEL, window="1h")
        # thumbs up (right) and label b for a (wrong): 1 of 2; classes a and b, both F1 0.
        assert (report["overall"]["count"], report["overall"]["accuracy"]) == (2, 0.5)
        assert report["overall"]["per_class"]["a"] == {
            "precision": 0.0,
            "recall": 0.0,
            "f1": 0.0,
            "support": 1,
        }
        grouped = keel.quality(MODEL, "1h", by="deployment", source="human")
        assert [(g["deployment"], g["count"]) for g in grouped["groups"]] == [(MODEL, 1)]

        with pytest.raises(KeelAPIError) as bad_score:
            keel.feedback(request_id, score="high")  # type: ignore[arg-type]
        assert (bad_score.value.status_code, bad_score.value.param) == (400, "score")
        with pytest.raises(KeelAPIError) as unknown:
            keel.feedback("req_nobody", thumbs="up")
        assert unknown.value.status_code == 404
        with pytest.raises(KeelAPIError) as bad_window:
            keel.quality(MODEL, window="forever")
        assert (bad_window.value.status_code, bad_window.value.param) == (400, "window")


def test_cli_feedback_and_quality(server_url: str) -> None:
    runner = CliRunner()
    request_id = _request_id(server_url)
    url = ["--url", server_url]

    sent = runner.invoke(
        cli,
        [
            *("feedback", request_id, "--label", "spam", "--expected", "spam"),
            *("--source", "code", "--name", "triage", *url),
        ],
    )
    assert sent.exit_code == 0, sent.output
    assert f"recorded feedback code/triage on {request_id}" in sent.output
    thumbs = runner.invoke(
        cli, ["feedback", request_id, "--thumbs", "down", "--score", "0.2", *url]
    )
    assert thumbs.exit_code == 0, thumbs.output
    replaced = runner.invoke(cli, ["feedback", request_id, "--thumbs", "up", *url])
    assert "replaced feedback human/default" in replaced.output

    listing = runner.invoke(cli, ["feedback", request_id, "--json", *url])
    assert listing.exit_code == 0, listing.output
    rows = json.loads(listing.output)
    assert [(row["source"], row["thumbs"], row["label"]) for row in rows] == [
        ("code", None, "spam"),
        ("human", "up", None),
    ]
    table = runner.invoke(cli, ["feedback", request_id, *url])
    assert "triage" in table.output and "spam" in table.output

    report = runner.invoke(cli, ["quality", MODEL, "--window", "2h", "--json", *url])
    assert report.exit_code == 0, report.output
    overall = json.loads(report.output)["overall"]
    assert (overall["count"], overall["correct"], overall["f1_macro"]) == (2, 2, 1.0)
    shown = runner.invoke(cli, ["quality", MODEL, "--by", "deployment", *url])
    assert shown.exit_code == 0, shown.output
    assert "spam" in shown.output and "1.000" in shown.output

    for args, named in [
        (["feedback", request_id, "--thumbs", "sideways"], "--thumbs"),
        (["feedback", request_id, "--label", "spam"], "--label"),
        (["feedback", request_id, "--thumbs", "up", "--source", "robot"], "--source"),
        (["quality", MODEL, "--window", "soon"], "field: window"),
        (["quality", MODEL, "--by", "team"], "--by"),
        (["feedback", "req_nobody", "--thumbs", "up"], "not recorded yet"),
    ]:
        failed = runner.invoke(cli, [*args, *url])
        assert failed.exit_code != 0, args
        assert named in failed.output, (args, failed.output)
        assert "Traceback" not in failed.output
    bad_score = runner.invoke(cli, ["feedback", request_id, "--score", "high", *url])
    assert bad_score.exit_code != 0 and "--score" in bad_score.output
