"""Datasets, prompts and scorers end to end: REST, the Python SDK and the CLI against a running
Keel server, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from keel.cli.app import app as cli
from keel.sdk import Keel, KeelAPIError
from tests.fakes.openai import FakeOpenAI, Reply
from tests.tracking.library_helpers import LibraryServer, library_server

__all__ = ["library_server"]

ROWS = [
    {"country": "France", "capital": "Paris"},
    {"country": "Peru", "capital": "Lima"},
    {"country": "Japan", "capital": "Tokyo"},
    {"country": "Chad", "capital": "N'Djamena"},
]


def run(url: str, *args: str) -> str:
    result = CliRunner().invoke(cli, [*args, "--url", url])
    assert result.exit_code == 0, result.output
    return result.output


def test_datasets_through_sdk_cli_and_rest(library_server: LibraryServer, tmp_path: Path) -> None:
    source = tmp_path / "capitals.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    with Keel(library_server.url) as keel:
        first = keel.datasets.add("capitals", source, splits={"train": 0.5, "test": 0.5})
        assert (first["ref"], first["row_count"], first["splits"]) == (
            "capitals@1",
            4,
            {"train": 2, "test": 2},
        )
        assert first["source"] == {"kind": "file", "file": "capitals.jsonl", "format": "jsonl"}
        assert (
            keel.datasets.add("capitals", source, splits={"train": 0.5, "test": 0.5})["created"]
            is False
        )
        assert sorted(keel.datasets.rows("capitals@1"), key=lambda r: r["country"]) == sorted(
            ROWS, key=lambda r: r["country"]
        )
        assert len(keel.datasets.rows("capitals", split="test")) == 2
        second = keel.datasets.add("capitals", rows={"eval": ROWS[:1]})
        assert second["version"] == 2
        exported = keel.datasets.export("capitals@1", tmp_path / "out.csv")
        assert exported.read_text().splitlines()[0] == "country,capital"
        with pytest.raises(KeelAPIError) as info:
            keel.datasets.rows("capitals@1", split="dev")
        assert info.value.status_code == 404

    listed = run(library_server.url, "datasets", "list", "--json")
    assert json.loads(listed)[0]["latest_version"] == 2
    shown = run(
        library_server.url, "datasets", "show", "capitals@1", "--rows", "1", "--split", "test"
    )
    assert shown.startswith("capitals@1 sha256:")
    added = run(library_server.url, "datasets", "add", "cli-set", str(source), "--split", "eval")
    assert added.startswith("cli-set@1 ") and "(eval: 4)" in added
    parquet = tmp_path / "out.parquet"
    run(library_server.url, "datasets", "export", "cli-set", str(parquet))
    assert run(library_server.url, "datasets", "add", "cli-set-2", str(parquet), "--split", "eval")
    with Keel(library_server.url) as keel:
        assert keel.datasets.rows("cli-set-2") == keel.datasets.rows("cli-set")

    with httpx.Client(base_url=library_server.url) as client:
        page = client.get("/v1/keel/datasets/capitals/versions/1/rows", params={"limit": 3})
        assert page.status_code == 200
        assert (len(page.json()["data"]), page.json()["has_more"]) == (3, True)
        bad = client.post("/v1/keel/datasets", json={"name": "x", "rows": [], "production": {}})
        assert bad.status_code == 400
        assert "exactly one of" in bad.json()["error"]["message"]
        wrong = client.post("/v1/keel/datasets", json={"name": "x", "rows": [1]})
        assert wrong.status_code == 400 and wrong.json()["error"]["type"] == "invalid_request_error"
        missing = client.get("/v1/keel/datasets/nope")
        assert missing.status_code == 404
        fractions = {"name": "x", "rows": ROWS, "splits": {"a": 0.5, "b": 0.1}}
        assert client.post("/v1/keel/datasets", json=fractions).status_code == 400
        empty = client.post("/v1/keel/datasets", json={"name": "x", "production": {"model": "m"}})
        assert empty.status_code == 404 and empty.json()["error"]["code"] == "no_rows"


def test_a_bad_file_is_named_by_the_cli(library_server: LibraryServer, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"a": 1}\nnot json\n')
    result = CliRunner().invoke(
        cli, ["datasets", "add", "x", str(broken), "--url", library_server.url]
    )
    assert result.exit_code == 1
    assert "broken.jsonl line 2: not JSON" in result.output
    result = CliRunner().invoke(
        cli, ["datasets", "add", "x", str(broken), "--splits", "train", "--url", library_server.url]
    )
    assert result.exit_code == 1 and "--splits" in result.output


def test_prompts_through_sdk_cli_and_rest(library_server: LibraryServer, tmp_path: Path) -> None:
    chat = tmp_path / "qa.yaml"
    chat.write_text(
        "messages:\n"
        "  - {role: system, content: 'Answer in one word.'}\n"
        "  - {role: user, content: 'Capital of {{ country }}?'}\n"
    )
    added = run(library_server.url, "prompts", "add", "capital", str(chat))
    assert added.startswith("capital@1 chat sha256:") and "variables: country" in added
    run(library_server.url, "prompts", "add", "capital", "--text", "Capital of {{ country }}?")
    assert run(library_server.url, "prompts", "alias", "capital", "production", "1").strip() == (
        "capital@production: nothing → 1"
    )
    rendered = run(library_server.url, "prompts", "render", "capital", "--var", "country=Peru")
    assert rendered.splitlines() == ["[system] Answer in one word.", "[user] Capital of Peru?"]
    shown = run(library_server.url, "prompts", "show", "capital@2")
    assert shown.splitlines()[1] == "Capital of {{ country }}?"
    with Keel(library_server.url) as keel:
        assert keel.prompts.render("capital@2", {"country": "Chad"}) == [
            {"role": "user", "content": "Capital of Chad?"}
        ]
        assert keel.prompts.version("capital")["version"] == 1  # production
        keel.prompts.alias("capital", "production", 2)
        assert keel.prompts.version("capital")["version"] == 2
        history = keel.prompts.alias_history("capital", "production")
        assert [(m["from_version"], m["to_version"]) for m in history] == [(None, 1), (1, 2)]
        listed = keel.prompts.list()
        assert listed[0]["aliases"] == {"production": 2}
        with pytest.raises(KeelAPIError) as info:
            keel.prompts.render("capital@1", {})
        assert info.value.status_code == 400
        assert "missing variable 'country'" in info.value.message
        with pytest.raises(KeelAPIError) as info:
            keel.prompts.add("broken", "{% if %}")
        assert info.value.status_code == 400 and info.value.param == "template"
    history_text = run(library_server.url, "prompts", "alias", "capital", "production", "--history")
    assert len(history_text.splitlines()) == 2
    with httpx.Client(base_url=library_server.url) as client:
        wrong = client.post("/v1/keel/prompts", json={"name": "x", "template": 5})
        assert wrong.status_code == 400
        alias = client.put("/v1/keel/prompts/capital/aliases/production", json={"version": 9})
        assert alias.status_code == 404


def test_scorers_on_the_server(
    library_server: LibraryServer, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    with Keel(library_server.url) as keel:
        types = {item["type"] for item in keel.scorers.list()}
        assert {"exact_match", "bleu", "rouge_l", "llm_judge"} <= types
        result = keel.scorers.score(
            "exact_match",
            [{"output": "Paris", "expected": "Paris"}, {"output": "Lyon", "expected": "Paris"}],
        )
        assert [s["passed"] for s in result["scores"]] == [True, False]
        assert result["aggregate"]["score"] == 0.5
        # The judge is a model served through the gateway: here a fake answering "Score: 9".
        fake_openai.then(Reply(content="Score: 9 - correct"))
        judged = keel.scorers.score(
            {"type": "llm_judge", "model": "judge", "rubric": "Correct capital?"},
            [{"output": "Paris", "expected": "Paris", "inputs": {"country": "France"}}],
        )
        assert judged["scores"][0]["value"] == pytest.approx((9 - 1) / (10 - 1))
        assert "Correct capital?" in fake_openai.last.body["messages"][1]["content"]
        similar = keel.scorers.score(
            {"type": "embedding_similarity", "model": "embedder"},
            [{"output": "a", "expected": "b"}],
        )
        # The fake embeds the n-th input as [0.1 n, 0.2, 0.3]: output [0.1, .2, .3], expected
        # [0.2, .2, .3]; cosine = 0.15 / (sqrt(0.14) * sqrt(0.17)).
        expected = 0.15 / (math.sqrt(0.14) * math.sqrt(0.17))
        assert similar["scores"][0]["value"] == pytest.approx(expected)
        for spec, message in (
            ("nope", "unknown scorer 'nope'"),
            ("json:dumps", "import path"),
            ({"type": "regex"}, "pattern"),
        ):
            with pytest.raises(KeelAPIError) as info:
                keel.scorers.score(spec, [{"output": "x"}])
            assert info.value.status_code == 400 and message in info.value.message
        with pytest.raises(KeelAPIError, match="case 1 has no expected value"):
            keel.scorers.score("bleu", [{"output": "x"}])
        local = keel.scorers.resolve({"type": "llm_judge", "model": "judge", "rubric": "r"})
        assert local.name == "llm_judge"
    cases = tmp_path / "cases.jsonl"
    cases.write_text('{"output": "the cat", "expected": "the cat is on the mat"}\n')
    printed = run(library_server.url, "scorers", "score", "rouge_l", str(cases))
    # LCS 2 words; P = 2/2, R = 2/6 → F = 0.5
    assert printed.splitlines()[0].startswith("1: 0.5")


def test_a_dataset_from_production_through_the_sdk(library_server: LibraryServer) -> None:
    from datetime import UTC, datetime

    from sqlalchemy import insert

    from keel.monitoring.feedback_tables import feedback
    from keel.monitoring.payload_tables import request_payloads
    from keel.store import Database

    at = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    database = Database(library_server.database_url)
    try:
        with database.engine.begin() as conn:
            # As if captured before the PII store policy was on: the server masks on the way.
            conn.execute(
                insert(request_payloads).values(
                    request_id="req_a",
                    created_at=at,
                    model="support",
                    input_text="Reach me at ann.lee@example.com",
                    output_text="Noted.",
                )
            )
            conn.execute(
                insert(request_payloads).values(
                    request_id="req_b",
                    created_at=at,
                    model="support",
                    input_text="What are your hours?",
                    output_text="9 to 5.",
                )
            )
            conn.execute(
                insert(feedback).values(
                    request_id="req_b",
                    source="human",
                    name="quality",
                    thumbs="down",
                    label="wrong",
                    expected="8 to 6",
                    model="support",
                    registry_version="",
                    deployment="",
                    requested_at=at,
                    created_by="qa",
                    created_at=at,
                    updated_at=at,
                )
            )
    finally:
        database.dispose()
    with Keel(library_server.url) as keel:
        everything = keel.datasets.add_from_production("support-all", model="support")
        rows = keel.datasets.rows(everything["ref"])
        assert [row["request_id"] for row in rows] == ["req_a", "req_b"]
        assert "ann.lee@example.com" not in rows[0]["input"]
        assert "EMAIL" in rows[0]["input"]
        wrong = keel.datasets.add_from_production("support-wrong", thumbs="down", label="wrong")
        assert keel.datasets.rows(wrong["ref"]) == [
            {
                "input": "What are your hours?",
                "output": "9 to 5.",
                "expected": "8 to 6",
                "label": "wrong",
                "thumbs": "down",
                "score": None,
                "model": "support",
                "registry_version": None,
                "request_id": "req_b",
                "created_at": rows[1]["created_at"],
            }
        ]
        assert wrong["source"]["kind"] == "production"


async def test_judge_calls_go_through_the_gateway_as_the_caller(
    tmp_path: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    from keel.identity import Actor
    from tests.conftest import flushed_records, remote_settings, running_app

    models = [{"id": "judge", "provider": "openai", "api_base": fake_openai_url}]
    settings = remote_settings(
        tmp_path / "home", models, auth={"admin_key": "library-test-admin-key-0123456789"}
    )
    async with running_app(settings) as (app, client):
        directory = app.state.keel.directory
        directory.create_team("ml")
        admin = Actor("admin-key", frozenset({"admin"}), kind="bootstrap")
        directory.create_user("viv", role="viewer", team="ml")
        directory.create_user("dev", role="developer", team="ml")
        _, viewer_key = directory.create_key("viv", name="k", created_by=admin)
        _, developer_key = directory.create_key("dev", name="k", created_by=admin)
        await app.state.keel.access.refresh()
        fake_openai.then(Reply(content="Score: 10"))
        body = {
            "scorer": {"type": "llm_judge", "model": "judge", "rubric": "r"},
            "cases": [{"output": "x"}],
        }
        refused = await client.post(
            "/v1/keel/scorers/score", json=body, headers={"authorization": f"Bearer {viewer_key}"}
        )
        assert refused.status_code == 403
        scored = await client.post(
            "/v1/keel/scorers/score",
            json=body,
            headers={"authorization": f"Bearer {developer_key}"},
        )
        assert scored.status_code == 200, scored.text
        assert scored.json()["scores"][0]["value"] == 1.0
        judged = [r for r in await flushed_records(app) if r["model_requested"] == "judge"]
        assert [(r["caller"], r["team"]) for r in judged] == [("dev", "ml")]
        # Datasets and prompts: viewers read, developers write.
        viewer = {"authorization": f"Bearer {viewer_key}"}
        developer = {"authorization": f"Bearer {developer_key}"}
        prompt = {"name": "p", "template": "{{ x }}"}
        assert (
            await client.post("/v1/keel/prompts", json=prompt, headers=viewer)
        ).status_code == 403
        assert (
            await client.post("/v1/keel/prompts", json=prompt, headers=developer)
        ).status_code == 201
        listed = await client.get("/v1/keel/prompts", headers=viewer)
        assert [p["created_by"] for p in listed.json()["data"]] == ["dev"]
