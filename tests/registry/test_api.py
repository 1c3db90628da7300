"""The registry's HTTP API, SDK and CLI, end to end against a real Registry on SQLite."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import typer
import yaml
from fastapi import Depends, FastAPI
from typer.testing import CliRunner

from keel.cli.registry_commands import app as registry_cli
from keel.cli.registry_commands import lineage as lineage_command
from keel.governance.access import Access
from keel.governance.config import AuthConfig
from keel.governance.directory import Directory
from keel.registry.service import Registry
from keel.sdk import Keel, KeelAPIError
from keel.sdk.registry import RegistryAPI, parse_gate
from keel.server.access import authorized
from keel.server.errors import install_error_handlers
from keel.server.routes import registry as routes
from keel.store import Database
from tests.conftest import remote_settings, running_app
from tests.fakes.server import serve_on_loopback

R = "/v1/keel/registry"
ALICE = {"x-keel-actor": "alice", "x-keel-roles": "developer"}
BOB = {"x-keel-actor": "bob", "x-keel-roles": "maintainer"}
CAROL = {"x-keel-actor": "carol", "x-keel-roles": "admin"}
Api = tuple[httpx.AsyncClient, list[str]]

SEED_YAML = """\
name: curie
type: Generative
description: The help-center assistant model
benchmark:
  accuracy: 90%
  latency: 200ms
  cost: $0.002/1k tokens
capabilities: [answers product questions, summarises tickets]
constraints: [Max sequence length 2,000 tokens, No audio or image inputs]
integrator_guide: Call it through the gateway as `curie`; keep prompts under 2k tokens.
sdk: [python]
endpoint: [/v1/chat/completions]
owners: [support-ml]
license: apache-2.0
"""


def card(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(SEED_YAML)
    return data | overrides


class AuditEntries(list[tuple[str, Any]]):
    def record(self, action: str, **fields: Any) -> None:
        self.append((action, fields))


def registry_app(home: Path) -> tuple[FastAPI, list[str]]:
    """The registry routes on a bare app, with the same error handlers and access checks as
    Keel's (open mode: the local user, who may act as others through x-keel-actor)."""
    database = Database(f"sqlite:///{home / 'keel.db'}")
    database.migrate()
    changes: list[str] = []
    app = FastAPI()
    install_error_handlers(app)
    guarded = [Depends(authorized)]
    app.include_router(routes.router, dependencies=guarded)
    app.include_router(routes.lineage_router, dependencies=guarded)
    app.state.keel = SimpleNamespace(
        registry=Registry(database),
        registry_changed=lambda: changes.append("changed"),
        access=Access(Directory(database), AuthConfig(), host="127.0.0.1"),
        audit=AuditEntries(),
    )
    return app, changes


@pytest.fixture
async def api(keel_home: Path) -> AsyncIterator[Api]:
    app, changes = registry_app(keel_home)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://keel") as client:
        yield client, changes


def error(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    return body


async def test_add_a_card_as_json_and_as_yaml(api: Api) -> None:
    client, changes = api
    created = await client.post(f"{R}/models", json=card(), headers=ALICE)
    assert created.status_code == 201, created.text
    record = created.json()
    assert (record["name"], record["number"], record["created_by"]) == ("curie", 1, "alice")
    assert record["digest"].startswith("sha256:")
    assert record["card"]["limits"]["max_input_tokens"] == 2000
    assert sorted(record["card"]["limits"]["rejected_modalities"]) == ["audio", "image"]
    assert record["card"]["benchmark"]["accuracy"] == pytest.approx(0.9)
    assert changes == ["changed"]

    other = SEED_YAML.replace("name: curie", "name: lovelace")
    posted = await client.post(
        f"{R}/models", content=other, headers={"content-type": "application/yaml", **ALICE}
    )
    assert posted.status_code == 201, posted.text
    assert posted.json()["name"] == "lovelace"
    assert posted.json()["digest"] != record["digest"]

    listed = (await client.get(f"{R}/models")).json()
    assert listed["object"] == "list"
    assert {model["name"] for model in listed["data"]} == {"curie", "lovelace"}


async def test_a_duplicate_model_is_409(api: Api) -> None:
    client, changes = api
    assert (await client.post(f"{R}/models", json=card())).status_code == 201
    again = await client.post(f"{R}/models", json=card())
    assert again.status_code == 409
    assert error(again)["type"] == "conflict_error"
    assert changes == ["changed"]  # a refused write changes nothing


@pytest.mark.parametrize(
    ("body", "content_type", "param"),
    [
        (json.dumps(card(benchmark={"accuracy": "190%"})), "application/json", "benchmark"),
        (json.dumps({"type": "Generative"}), "application/json", "name"),
        (json.dumps(card(limits={"rejected_modalities": ["smell"]})), "application/json", None),
        ("name: curie\nlimits:\n  max_input_tokens: lots\n", "application/yaml", "limits"),
    ],
)
async def test_a_bad_card_is_400_naming_the_field(
    api: Api, body: str, content_type: str, param: str | None
) -> None:
    client, _ = api
    response = await client.post(
        f"{R}/models", content=body, headers={"content-type": content_type}
    )
    assert response.status_code == 400, response.text
    found = error(response)
    assert found["type"] == "invalid_request_error"
    expected = param or "limits.rejected_modalities"
    assert found["param"].startswith(expected)
    assert found["message"].startswith(found["param"])


async def test_unreadable_bodies_are_400(api: Api) -> None:
    client, _ = api
    broken = await client.post(f"{R}/models", content=b"{not json")
    assert broken.status_code == 400 and error(broken)["code"] == "invalid_json"
    listing = await client.post(f"{R}/models", json=["a", "list"])
    assert listing.status_code == 400
    bad_yaml = await client.post(
        f"{R}/models", content="name: [unclosed", headers={"content-type": "application/yaml"}
    )
    assert bad_yaml.status_code == 400 and "line" in error(bad_yaml)["message"]
    empty = await client.post(f"{R}/models", content=b"")
    assert empty.status_code == 400
    role = await client.post(f"{R}/models", json=card(), headers={"x-keel-roles": "wizard"})
    assert role.status_code == 400 and error(role)["param"] == "x-keel-roles"
    assert "wizard" in error(role)["message"]


async def test_show_versions_diff_and_export(api: Api) -> None:
    client, _ = api
    await client.post(f"{R}/models", json=card(), headers=ALICE)
    second = await client.post(
        f"{R}/models/curie/versions", json=card(description="Now with refunds"), headers=ALICE
    )
    assert second.status_code == 201 and second.json()["number"] == 2

    summary = (await client.get(f"{R}/models/curie")).json()
    assert summary["latest"] == 2
    assert [version["number"] for version in summary["versions"]] == [1, 2]
    one = (await client.get(f"{R}/models/curie/versions/1")).json()
    assert one["card"]["description"] == "The help-center assistant model"
    assert (await client.get(f"{R}/models/curie/versions/9")).status_code == 404
    assert (await client.get(f"{R}/models/nobody")).status_code == 404

    diff = (await client.get(f"{R}/models/curie/diff", params={"from": 1, "to": 2})).json()
    first = "The help-center assistant model"
    assert diff["changes"]["description"] == {"from": first, "to": "Now with refunds"}

    exported = await client.get(f"{R}/models/curie/export", params={"version": 1})
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("application/yaml")
    authored = {"accuracy": "90%", "latency": "200ms", "cost": "$0.002/1k tokens"}
    assert yaml.safe_load(exported.text)["benchmark"] == authored
    assert exported.headers["x-keel-card-digest"] == one["digest"]
    # The export round-trips: posted back, it is a card with version 1's digest.
    again = await client.post(
        f"{R}/models/curie/versions",
        content=exported.text,
        headers={"content-type": "application/yaml", **ALICE},
    )
    assert again.status_code == 201, again.text
    assert (again.json()["number"], again.json()["digest"]) == (3, one["digest"])

    as_json = await client.get(f"{R}/models/curie/export", params={"format": "json"})
    assert as_json.headers["x-keel-card-digest"] == one["digest"]  # the latest: version 3
    assert json.loads(as_json.text)["description"] == "The help-center assistant model"

    await client.post(
        f"{R}/models/curie/versions/1/evaluations",
        json={"metric": "accuracy", "value": 0.93, "dataset": "tickets-v1", "run_id": "run-7"},
        headers=ALICE,
    )
    hf = (await client.get(f"{R}/models/curie/export?format=huggingface&version=1")).json()
    assert hf["license"] == "apache-2.0"
    sources = {result["source"]["name"] for result in hf["model-index"][0]["results"]}
    assert sources == {"declared", "measured"}
    bad = await client.get(f"{R}/models/curie/export", params={"format": "pdf"})
    assert bad.status_code == 400 and error(bad)["param"] == "format"


async def test_alias_moves_history_and_time_travel(api: Api) -> None:
    client, _ = api
    await client.post(f"{R}/models", json=card(), headers=ALICE)
    await client.post(f"{R}/models/curie/versions", json=card(description="v2"), headers=ALICE)
    champion = f"{R}/models/curie/aliases/champion"
    before = datetime.now(UTC)
    moved = await client.put(champion, json={"version": 1, "reason": "baseline"}, headers=ALICE)
    assert moved.status_code == 200 and moved.json()["to_version"] == 1, moved.text
    between = datetime.now(UTC)
    stale = {"version": 2, "reason": "try v2", "expected_version": 2}
    assert (await client.put(champion, json=stale, headers=ALICE)).status_code == 409
    fresh = {"version": 2, "reason": "v2 wins", "expected_version": 1}
    again = await client.put(champion, json=fresh, headers=ALICE)
    assert again.status_code == 200 and again.json()["from_version"] == 1, again.text

    history = (await client.get(f"{R}/models/curie/aliases/champion/history")).json()["data"]
    assert [(move["to_version"], move["reason"], move["actor"]) for move in history] == [
        (1, "baseline", "alice"),
        (2, "v2 wins", "alice"),
    ]
    assert len((await client.get(f"{R}/models/curie/aliases/history")).json()["data"]) == 2

    async def alias_at(time: datetime) -> Any:
        found = await client.get(f"{champion}/at", params={"time": time.isoformat()})
        assert found.status_code == 200, found.text
        return found.json()["version"]

    assert await alias_at(between) == 1
    assert await alias_at(datetime.now(UTC) + timedelta(seconds=1)) == 2
    assert await alias_at(before - timedelta(days=1)) is None
    by_alias = (await client.get(f"{R}/models/curie/versions/champion")).json()
    assert by_alias["number"] == 2

    missing_reason = await client.put(f"{R}/models/curie/aliases/x", json={"version": 1})
    assert missing_reason.status_code == 400 and error(missing_reason)["param"] == "reason"


async def test_promotion_needs_another_maintainer(api: Api) -> None:
    client, _ = api
    await client.post(f"{R}/models", json=card(), headers=ALICE)
    body = {"version": 1, "stage": "staging", "comment": "ready"}
    requested = await client.post(f"{R}/models/curie/promotions", json=body, headers=BOB)
    assert requested.status_code == 201, requested.text
    promotion = requested.json()
    assert promotion["status"] == "pending" and promotion["requested_by"] == "bob"

    own = await client.post(f"{R}/promotions/{promotion['id']}/approve", json={}, headers=BOB)
    assert own.status_code == 403 and error(own)["type"] == "permission_error"
    junior = await client.post(f"{R}/promotions/{promotion['id']}/approve", headers=ALICE)
    assert junior.status_code == 403

    pending = (await client.get(f"{R}/promotions", params={"status": "pending"})).json()["data"]
    assert [item["id"] for item in pending] == [promotion["id"]]

    approved = await client.post(
        f"{R}/promotions/{promotion['id']}/approve", json={"comment": "lgtm"}, headers=CAROL
    )
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "approved"
    staged = (await client.get(f"{R}/models/curie/versions/staging")).json()
    assert staged["number"] == 1 and staged["stage"] == "staging"
    assert (await client.get(f"{R}/promotions", params={"model": "curie"})).json()["data"]

    bad_stage = await client.post(
        f"{R}/models/curie/promotions", json={"version": 1, "stage": "moon"}, headers=BOB
    )
    assert bad_stage.status_code == 400 and error(bad_stage)["param"] == "stage"

    second = await client.post(
        f"{R}/models/curie/promotions", json={"version": 1, "stage": "production"}, headers=BOB
    )
    rejected = await client.post(
        f"{R}/promotions/{second.json()['id']}/reject", json={"comment": "no"}, headers=CAROL
    )
    assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"


async def test_failing_quality_gates_block_approval(api: Api) -> None:
    client, _ = api
    await client.post(f"{R}/models", json=card(), headers=ALICE)
    gates = [{"metric": "accuracy", "op": ">=", "threshold": 0.95}]
    set_gates = await client.put(f"{R}/models/curie/gates/staging", json=gates, headers=BOB)
    assert set_gates.status_code == 200, set_gates.text
    assert set_gates.json()["gates"][0]["metric"] == "accuracy"
    bad_op = await client.put(
        f"{R}/models/curie/gates/staging",
        json=[{"metric": "accuracy", "op": "~", "threshold": 1}],
        headers=BOB,
    )
    assert bad_op.status_code == 400 and error(bad_op)["param"] == "0.op"

    evaluation = await client.post(
        f"{R}/models/curie/versions/1/evaluations",
        json={"metric": "accuracy", "value": 0.9, "dataset": "tickets-v1"},
        headers=ALICE,
    )
    assert evaluation.status_code == 201, evaluation.text
    promotion = (
        await client.post(
            f"{R}/models/curie/promotions", json={"version": 1, "stage": "staging"}, headers=ALICE
        )
    ).json()
    blocked = await client.post(f"{R}/promotions/{promotion['id']}/approve", headers=BOB)
    assert blocked.status_code == 400, blocked.text
    assert error(blocked)["code"] == "quality_gate_failed"
    assert "accuracy" in error(blocked)["message"]
    developer = await client.post(
        f"{R}/promotions/{promotion['id']}/approve", json={"override_gates": True}, headers=BOB
    )
    assert developer.status_code == 403  # only an admin overrides gates
    forced = await client.post(
        f"{R}/promotions/{promotion['id']}/approve", json={"override_gates": True}, headers=CAROL
    )
    assert forced.status_code == 200, forced.text
    assert forced.json()["status"] == "approved"


async def test_lineage_and_archive(api: Api) -> None:
    client, _ = api
    await client.post(f"{R}/models", json=card(), headers=ALICE)
    linked = await client.post(
        "/v1/keel/lineage/links",
        json={
            "upstream": {"kind": "dataset", "id": "s3://tickets/v1"},
            "downstream": {"kind": "model_version", "id": "curie@1"},
            "relation": "trained_on",
        },
        headers=ALICE,
    )
    assert linked.status_code == 201, linked.text
    tree = (await client.get("/v1/keel/lineage/model_version/curie@1")).json()
    assert tree["entity"] == {"kind": "model_version", "id": "curie@1"}
    assert tree["upstream"][0]["entity"] == {"kind": "dataset", "id": "s3://tickets/v1"}
    assert tree["upstream"][0]["relation"] == "trained_on"
    down = await client.get(
        "/v1/keel/lineage/dataset/s3://tickets/v1", params={"direction": "downstream"}
    )
    assert down.json()["downstream"][0]["entity"]["id"] == "curie@1"
    bad = await client.get("/v1/keel/lineage/dataset/x", params={"direction": "sideways"})
    assert bad.status_code == 400

    archived = await client.post(f"{R}/models/curie/archive", headers=ALICE)
    assert archived.status_code == 200, archived.text
    assert (await client.get(f"{R}/models")).json()["data"] == []
    everything = (await client.get(f"{R}/models", params={"include_archived": "true"})).json()
    assert [model["name"] for model in everything["data"]] == ["curie"]


# -- SDK and CLI against a real server -------------------------------------------------------


@pytest.fixture
def served(keel_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    app, _ = registry_app(keel_home)
    with serve_on_loopback(app) as url:
        monkeypatch.setenv("KEEL_URL", url)
        yield url


def test_parse_gate() -> None:
    gate = {"metric": "accuracy", "op": ">=", "threshold": 0.8, "dataset": None}
    assert parse_gate("accuracy>=0.8") == gate
    assert parse_gate("latency_ms @ tickets < 250")["dataset"] == "tickets"
    for text, message in (("accuracy>=high", "not a number"), ("accuracy", "METRIC>=NUMBER")):
        with pytest.raises(ValueError, match=message):
            parse_gate(text)


def test_the_sdk(served: str, tmp_path: Path) -> None:
    path = tmp_path / "curie.yaml"
    path.write_text(SEED_YAML, encoding="utf-8")
    with Keel(served) as client:
        registry = RegistryAPI(client._request, http=client._http).as_actor("alice", ["developer"])
        assert registry.add(path)["number"] == 1
        assert registry.add(card(description="two"), name="curie")["number"] == 2
        assert [model["name"] for model in registry.list()] == ["curie"]
        assert [version["number"] for version in registry.versions("curie")] == [1, 2]
        assert registry.show("curie@1")["card"]["description"] == "The help-center assistant model"
        assert yaml.safe_load(registry.export("curie", version=1))["name"] == "curie"
        assert "model-index" in json.loads(registry.export("curie", format="huggingface"))
        registry.alias("curie", "champion", 2, reason="better")
        assert registry.history("curie", "champion")[0]["to_version"] == 2
        at = registry.alias_at("curie", "champion", datetime.now(UTC).isoformat())
        assert at["version"] == 2
        promotion = registry.promote("curie", 2, "staging")
        with pytest.raises(KeelAPIError) as refused:
            registry.approve(promotion["id"])
        assert refused.value.status_code == 403
        approved = registry.as_actor("bob", ["maintainer"]).approve(promotion["id"])
        assert approved["status"] == "approved"
        assert registry.promotions(model="curie")[0]["id"] == promotion["id"]
        registry.as_actor("bob", ["maintainer"]).gates("curie", "production", ["accuracy>=0.5"])
        assert registry.evaluate("curie", 2, "accuracy", 0.7)["value"] == 0.7
        version = {"kind": "model_version", "id": "curie@2"}
        registry.link(("dataset", "tickets"), version, relation="trained_on")
        assert registry.lineage("dataset", "tickets")["downstream"]
        assert registry.diff("curie", 1, 2)
        registry.archive("curie")
        assert registry.list() == []


def invoke(*args: str, command: Any = registry_cli) -> Any:
    return CliRunner().invoke(command, list(args), catch_exceptions=False)


def test_the_cli(served: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "curie.yaml"
    path.write_text(SEED_YAML, encoding="utf-8")
    monkeypatch.setenv("KEEL_ACTOR", "alice")
    monkeypatch.setenv("KEEL_ROLES", "developer")

    added = invoke("add", str(path))
    assert added.exit_code == 0 and "curie@1" in added.output, added.output
    duplicate = invoke("add", str(path))
    assert duplicate.exit_code == 1 and "409" in duplicate.output

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbenchmark:\n  accuracy: 190%\n", encoding="utf-8")
    refused = invoke("add", str(bad))
    assert refused.exit_code == 1 and "field: benchmark" in refused.output

    two = tmp_path / "two.yaml"
    two.write_text(SEED_YAML.replace("help-center", "billing"), encoding="utf-8")
    assert "curie@2" in invoke("add", str(two), "--version-of", "curie").output
    assert "curie" in invoke("list").output
    assert json.loads(invoke("show", "curie@1").output)["number"] == 1
    assert "billing" in invoke("diff", "curie", "1", "2").output
    assert "name: curie" in invoke("export", "curie", "--version", "1").output
    assert "model-index" in invoke("export", "curie", "--format", "huggingface").output
    assert invoke("export", "curie", "--format", "pdf").exit_code == 1

    moved = invoke("alias", "curie", "champion", "1", "--reason", "baseline")
    assert moved.exit_code == 0 and "-> 1" in moved.output
    assert "baseline" in invoke("history", "curie", "--alias", "champion").output

    requested = invoke("promote", "curie", "2", "staging")
    assert requested.exit_code == 0, requested.output
    promotion_id = requested.output.split()[0]
    own = invoke("approve", promotion_id)
    assert own.exit_code == 1 and "403" in own.output
    pending = json.loads(invoke("promotions", "--status", "pending", "--json").output)
    assert [item["id"] for item in pending] == [promotion_id]
    approved = invoke("approve", promotion_id, "--actor", "bob", "--roles", "maintainer")
    assert approved.exit_code == 0 and "approved" in approved.output

    gated = invoke("gates", "curie", "production", "--gate", "accuracy>=0.95", "--roles", "admin")
    assert gated.exit_code == 0 and "accuracy >= 0.95" in gated.output
    assert invoke("gates", "curie", "production", "--gate", "accuracy=~1").exit_code == 1
    assert invoke("evaluate", "curie", "2", "accuracy", "0.9", "--dataset", "t").exit_code == 0
    second = invoke("promote", "curie", "2", "production").output.split()[0]
    blocked = invoke("approve", second, "--actor", "bob", "--roles", "maintainer")
    assert blocked.exit_code == 1 and "accuracy" in blocked.output
    assert "rejected" in invoke("reject", second, "--actor", "bob", "--roles", "maintainer").output

    with Keel(served) as client:
        RegistryAPI(client._request).link(
            ("dataset", "tickets"), ("model_version", "curie@2"), relation="trained_on"
        )
    app = typer.Typer()
    app.command()(lineage_command)
    tree = invoke("model_version:curie@2", command=app)
    assert tree.exit_code == 0, tree.output
    assert "dataset:tickets" in tree.output and "trained_on" in tree.output
    assert invoke("nonsense", command=app).exit_code == 1

    assert invoke("archive", "curie").exit_code == 0
    assert "curie" not in invoke("list").output


async def test_the_keel_app_serves_the_registry(keel_home: Path) -> None:
    """Through `create_app`, once the routes are wired into it."""
    settings = remote_settings(keel_home, [])
    async with running_app(settings) as (app, client):
        if f"{R}/models" not in app.openapi()["paths"]:
            pytest.skip("the registry routes are not wired into create_app yet")
        created = await client.post(f"{R}/models", json=card(), headers=ALICE)
        assert created.status_code == 201, created.text
        view = getattr(app.state.keel, "registry_view", None)
        if view is not None:
            await view.settle()
            assert view.resolve("curie").version == 1
        assert (await client.get(f"{R}/models/curie")).json()["latest"] == 1
        bad = await client.post(f"{R}/models", json=card(name=""))
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "name"
