"""The published API description is the API Keel serves: every reference resolves, every
status a route answers is documented with the body it has, and the management bodies take
JSON's types as they are, with one rule for a field wherever it appears."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from keel.governance.permissions import PUBLIC_ROUTES
from keel.server import create_app
from tests.conftest import remote_settings, running_app

ADMIN_KEY = "contract-admin-key-0123456789abcdef"
HEADERS = {"authorization": f"Bearer {ADMIN_KEY}"}
K = "/v1/keel"
ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    settings = remote_settings(tmp_path_factory.mktemp("spec"), [], auth={"admin_key": ADMIN_KEY})
    document: dict[str, Any] = create_app(settings).openapi()
    return document


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield method.upper(), path, operation


def _references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _references(value)
    elif isinstance(node, list):
        for value in node:
            yield from _references(value)


def _error_statuses(operation: dict[str, Any]) -> set[int]:
    """The statuses documented with the error body (a range such as 4XX left aside)."""
    return {
        int(status)
        for status, response in operation["responses"].items()
        if status.isdigit()
        and response.get("content", {}).get("application/json", {}).get("schema") == ERROR_REF
    }


# -- the document ---------------------------------------------------------------------------


def test_every_reference_resolves(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    references = set(_references(spec))
    assert references, "the description references no schema at all"
    dangling = sorted(
        ref
        for ref in references
        if not ref.startswith("#/components/schemas/") or ref.split("/")[-1] not in schemas
    )
    assert not dangling
    # The request models of the inference routes and the model card are among them.
    for name in ("ChatCompletionRequest", "InputAudio", "StreamOptions", "DeclaredBenchmark"):
        assert name in schemas


def test_every_app_of_a_process_has_the_whole_description(
    spec: dict[str, Any], tmp_path: Path
) -> None:
    """The description is built from route metadata that all apps share; building one must
    leave nothing out of the next."""
    again = create_app(remote_settings(tmp_path, [])).openapi()
    assert again["components"]["schemas"].keys() == spec["components"]["schemas"].keys()
    assert again["paths"] == spec["paths"]


def test_validation_errors_are_documented_as_400_with_the_error_body(
    spec: dict[str, Any],
) -> None:
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert spec["components"]["schemas"]["ErrorResponse"]["required"] == ["error"]
    for method, path, operation in _operations(spec):
        assert "422" not in operation["responses"], f"{method} {path}"
        if operation.get("parameters") or operation.get("requestBody"):
            assert 400 in _error_statuses(operation), f"{method} {path}"


def test_every_guarded_route_documents_its_refusals(spec: dict[str, Any]) -> None:
    for method, path, operation in _operations(spec):
        if (method, path) in PUBLIC_ROUTES:
            assert not _error_statuses(operation) & {401, 403}, f"{method} {path}"
        else:
            assert _error_statuses(operation) >= {401, 403, 500}, f"{method} {path}"


def test_every_route_that_takes_a_body_documents_its_size_and_type_refusals(
    spec: dict[str, Any],
) -> None:
    for method, path, operation in _operations(spec):
        if method in {"POST", "PUT", "PATCH"}:
            assert _error_statuses(operation) >= {413, 415}, f"{method} {path}"


def test_inference_routes_document_their_bodies_and_upstream_failures(
    spec: dict[str, Any],
) -> None:
    for path, model in (
        ("/v1/chat/completions", "ChatCompletionRequest"),
        ("/v1/completions", "CompletionRequest"),
        ("/v1/embeddings", "EmbeddingRequest"),
    ):
        operation = spec["paths"][path]["post"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{model}"}
        assert _error_statuses(operation) >= {400, 404, 429, 502, 503, 504}
    streamed = spec["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert set(streamed) == {"application/json", "text/event-stream"}


def test_the_audit_export_is_documented_as_json_lines(spec: dict[str, Any]) -> None:
    answer = spec["paths"][f"{K}/audit/export"]["get"]["responses"]["200"]
    assert set(answer["content"]) == {"application/x-ndjson"}


def test_model_cards_may_be_sent_as_json_or_yaml(spec: dict[str, Any]) -> None:
    content = spec["paths"][f"{K}/registry/models"]["post"]["requestBody"]["content"]
    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/ModelCard"}
    assert "application/yaml" in content


# -- the answers ----------------------------------------------------------------------------


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = remote_settings(tmp_path, [], auth={"admin_key": ADMIN_KEY})
    async with running_app(settings) as (_app, found):
        created = await found.post(f"{K}/teams", json={"name": "ml"}, headers=HEADERS)
        assert created.status_code == 201, created.text
        created = await found.post(f"{K}/users", json={"name": "alice"}, headers=HEADERS)
        assert created.status_code == 201, created.text
        yield found


async def test_error_answers_are_the_documented_ones(
    client: httpx.AsyncClient, spec: dict[str, Any]
) -> None:
    """Each kind of refusal, checked against the status list and the schema of its route."""
    error_schema = {**spec["components"]["schemas"]["ErrorResponse"], **spec}
    calls: list[tuple[int, str, str, str, dict[str, Any]]] = [
        (401, "GET", f"{K}/teams", "/v1/keel/teams", {}),
        (400, "GET", f"{K}/users?kind=robot", "/v1/keel/users", {"headers": HEADERS}),
        (404, "GET", f"{K}/teams/nope", "/v1/keel/teams/{name}", {"headers": HEADERS}),
        (
            409,
            "POST",
            f"{K}/teams",
            "/v1/keel/teams",
            {"headers": HEADERS, "json": {"name": "ml"}},
        ),
        (
            413,
            "POST",
            f"{K}/orgs",
            "/v1/keel/orgs",
            {
                "headers": {**HEADERS, "content-type": "application/json"},
                "content": b'{"name": "' + b"x" * (11 * 1024 * 1024) + b'"}',
            },
        ),
        (
            415,
            "POST",
            f"{K}/orgs",
            "/v1/keel/orgs",
            {"headers": {**HEADERS, "content-type": "text/plain"}, "content": b"name=acme"},
        ),
        (
            400,
            "POST",
            "/v1/chat/completions",
            "/v1/chat/completions",
            {"headers": HEADERS, "json": {"model": "gpt"}},
        ),
    ]
    for status, method, url, documented_path, options in calls:
        response = await client.request(method, url, **options)
        assert response.status_code == status, (url, response.text)
        operation = spec["paths"][documented_path][method.lower()]
        assert status in _error_statuses(operation), (method, documented_path, status)
        assert response.headers["content-type"] == "application/json"
        jsonschema.validate(response.json(), error_schema)


async def test_the_audit_export_answers_json_lines(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{K}/audit/export", headers=HEADERS)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")


# -- strict types, one rule per field -------------------------------------------------------

# JSON values that are not what the field holds, though a lax parser would convert them.
NOT_A_COUNT = {"true": True, "text-7": "7", "float-7.5": 7.5, "list": [7]}
NOT_A_BOOLEAN = {"text-true": "true", "one": 1, "yes": "yes"}
# Region tags: each refused by the create and the change alike.
BAD_REGIONS = {
    "empty": "",
    "blank": " ",
    "5000-chars": "r" * 5000,
    "control": "eu-west\x01",
    "newline": "eu-west-1\n",
    "padded": " eu-west-1",
}


async def _expect_400(
    client: httpx.AsyncClient, method: str, url: str, body: Any, param: str
) -> None:
    response = await client.request(method, url, json=body, headers=HEADERS)
    assert response.status_code == 400, (method, url, body, response.text)
    assert response.json()["error"]["param"] == param, response.text


@pytest.mark.parametrize("value", NOT_A_COUNT.values(), ids=NOT_A_COUNT.keys())
async def test_limits_take_json_numbers_only(client: httpx.AsyncClient, value: Any) -> None:
    limits = {"limits": {"rpm": value}}
    await _expect_400(client, "POST", f"{K}/teams", {"name": "t2", **limits}, "limits.rpm")
    await _expect_400(client, "PATCH", f"{K}/teams/ml", limits, "limits.rpm")
    await _expect_400(client, "POST", f"{K}/users", {"name": "bob", **limits}, "limits.rpm")
    await _expect_400(client, "PATCH", f"{K}/users/alice", limits, "limits.rpm")
    await _expect_400(client, "POST", f"{K}/keys", {"user": "alice", **limits}, "limits.rpm")


async def test_numbers_and_booleans_are_not_read_from_text(client: httpx.AsyncClient) -> None:
    await _expect_400(client, "PATCH", f"{K}/users/alice", {"disabled": "true"}, "disabled")
    await _expect_400(client, "PATCH", f"{K}/users/alice", {"disabled": 0}, "disabled")
    await _expect_400(
        client, "POST", f"{K}/keys", {"user": "alice", "expires_in_s": "60"}, "expires_in_s"
    )
    await _expect_400(client, "POST", f"{K}/keys/abc/rotate", {"overlap_s": "60"}, "overlap_s")
    card = f"{K}/registry/models/nothing-yet"
    await _expect_400(
        client, "PUT", f"{card}/aliases/candidate", {"version": "1", "reason": "r"}, "version"
    )
    await _expect_400(client, "POST", f"{card}/archive", {"version": True}, "version")
    await _expect_400(
        client,
        "PUT",
        f"{card}/gates/staging",
        [{"metric": "m", "op": ">=", "threshold": "1"}],
        "0.threshold",
    )


@pytest.mark.parametrize("value", NOT_A_BOOLEAN.values(), ids=NOT_A_BOOLEAN.keys())
async def test_a_promotion_approval_takes_a_json_boolean(
    client: httpx.AsyncClient, value: Any
) -> None:
    await _expect_400(
        client,
        "POST",
        f"{K}/registry/promotions/p1/approve",
        {"override_gates": value},
        "override_gates",
    )


async def test_times_are_still_iso_8601_text(client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"{K}/keys", json={"user": "alice", "expires_at": "2030-01-01T00:00:00Z"}, headers=HEADERS
    )
    assert response.status_code == 201, response.text
    assert response.json()["expires_at"].startswith("2030-01-01T00:00:00")


@pytest.mark.parametrize("region", BAD_REGIONS.values(), ids=BAD_REGIONS.keys())
async def test_a_region_refused_on_create_is_refused_on_change(
    client: httpx.AsyncClient, region: str
) -> None:
    regions = {"allowed_regions": ["eu-west-1", region]}
    await _expect_400(client, "POST", f"{K}/teams", {"name": "t2", **regions}, "allowed_regions.1")
    await _expect_400(client, "PATCH", f"{K}/teams/ml", regions, "allowed_regions.1")
    team = await client.get(f"{K}/teams/ml", headers=HEADERS)
    assert team.json()["allowed_regions"] is None  # nothing was changed


async def test_a_good_region_list_is_taken_by_create_and_change(
    client: httpx.AsyncClient,
) -> None:
    regions = {"allowed_regions": ["us-east-1", "eu west (Paris)"]}
    created = await client.post(f"{K}/teams", json={"name": "t2", **regions}, headers=HEADERS)
    changed = await client.patch(f"{K}/teams/ml", json=regions, headers=HEADERS)
    for response in (created, changed):
        assert response.status_code in (200, 201), response.text
        assert response.json()["allowed_regions"] == ["eu west (Paris)", "us-east-1"]
    too_many = {"allowed_regions": [f"r{index}" for index in range(101)]}
    await _expect_400(client, "POST", f"{K}/teams", {"name": "t3", **too_many}, "allowed_regions")
    await _expect_400(client, "PATCH", f"{K}/teams/ml", too_many, "allowed_regions")


@pytest.mark.parametrize(
    ("field", "value"),
    [("email", "e" * 321), ("team", "t" * 129), ("role", "owner"), ("email", 7)],
)
async def test_a_user_field_refused_on_create_is_refused_on_change(
    client: httpx.AsyncClient, field: str, value: Any
) -> None:
    await _expect_400(client, "POST", f"{K}/users", {"name": "bob", field: value}, field)
    await _expect_400(client, "PATCH", f"{K}/users/alice", {field: value}, field)
