"""Property-based fuzzing of every route in the OpenAPI description (Schemathesis).

Each operation gets requests generated from its documented parameters and bodies, valid ones
and invalid ones, sent in-process to an app that requires authentication, as its admin, with
one remote model on the fake OpenAI server (never the bundled local models: they are slow).
Every answer must be no 5xx, carry a documented status and content type, and match the
documented schema, error bodies included.

Random names almost never name something that exists, so the server starts with a team, a
user, a key and a registered model, and half the generated cases name those instead: the
routes then go past their 404s into the code that reads and writes them. The seed is fixed
and the budget per operation small, so a run takes the same path every time and fits in CI.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.config import SchemathesisConfig
from schemathesis.python.asgi import get_client, shutdown_lifespans

from keel.server import create_app
from tests.conftest import remote_settings
from tests.fakes.openai import FakeOpenAI

ADMIN_KEY = "fuzz-admin-key-0123456789abcdef"
MODEL = "gpt"
CARD = "fuzz-card"
MAX_EXAMPLES = 12
SEED = 20_260_301
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)


def _config() -> SchemathesisConfig:
    return SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            # Generation is slower on a loaded CI machine; that is no failure of the server.
            "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],
            "headers": {"authorization": f"Bearer {ADMIN_KEY}"},
            # Valid and invalid input; no example database, so every run starts the same.
            "generation": {
                "mode": "all",
                "max-examples": MAX_EXAMPLES,
                "database": "none",
                "deterministic": True,
            },
            # The coverage phase sends each schema's edges (bounds, lengths, every enum value,
            # each field missing or of the wrong type) before the random cases.
            "phases": {"stateful": {"enabled": False}, "coverage": {"enabled": True}},
            "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
        }
    )


def _seed(client: Any) -> dict[str, Any]:
    """What the steered cases name: each path parameter's existing value, per route family."""
    auth = {"authorization": f"Bearer {ADMIN_KEY}"}
    for url, body in (
        ("/v1/keel/teams", {"name": "ml"}),
        ("/v1/keel/users", {"name": "alice", "team": "ml"}),
    ):
        response = client.post(url, json=body, headers=auth)
        assert response.status_code == 201, response.text
    key = client.post("/v1/keel/keys", json={"user": "alice"}, headers=auth)
    assert key.status_code == 201, key.text
    card = {"name": CARD, "description": "A card to fuzz.", "owners": ["alice"]}
    registered = client.post("/v1/keel/registry/models", json=card, headers=auth)
    assert registered.status_code == 201, registered.text
    changed = client.post(
        f"/v1/keel/registry/models/{CARD}/versions",
        json={**card, "description": "A changed card."},
        headers=auth,
    )
    assert changed.status_code == 201, changed.text
    promotion = client.post(
        f"/v1/keel/registry/models/{CARD}/promotions",
        json={"version": 2, "stage": "staging"},
        headers=auth,
    )
    assert promotion.status_code == 201, promotion.text
    return {
        "key_id": key.json()["id"],
        "model_id": MODEL,
        "ref": "1",
        "version": 1,
        "alias": "latest",
        "stage": "staging",
        "promotion_id": promotion.json()["id"],
        "kind": "model_version",
        "entity_id": f"{CARD}@1",
    }


def _steer(loaded: Any, known: dict[str, Any]) -> None:
    names = {"teams": "ml", "users": "alice", "registry": CARD, "drift": MODEL}

    def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any]) -> Any:
        if not path_parameters:
            return st.just(path_parameters)
        path = context.operation.path
        existing = {key: value for key, value in known.items() if key in path_parameters}
        family = next((family for family in names if f"/{family}/" in path), None)
        if "name" in path_parameters and family is not None:
            existing["name"] = names[family]
        return st.sampled_from([path_parameters, {**path_parameters, **existing}])

    def flatmap_body(context: Any, body: Any) -> Any:
        if not (isinstance(body, dict) and "model" in body):
            return st.just(body)
        return st.sampled_from([body, {**body, "model": MODEL}])

    loaded.hook(flatmap_path_parameters)
    loaded.hook(flatmap_body)


@pytest.fixture
def keel_schema(tmp_path: Path, fake_openai: FakeOpenAI, fake_openai_url: str) -> Iterator[Any]:
    # `fake_openai` is reset: no reply another test scripted is left to answer these calls.
    settings = remote_settings(
        tmp_path,
        [{"id": MODEL, "provider": "openai", "api_base": fake_openai_url, "timeout_s": 5}],
        auth={"admin_key": ADMIN_KEY},
    )
    app = create_app(settings)
    try:
        # The client starts the app's lifespan, which the fuzzing's own clients then share.
        with get_client(app) as client:
            for _ in range(600):  # 503 until the PII analyzer has loaded
                if client.get("/readyz").status_code == 200:
                    break
                time.sleep(0.1)
            else:
                pytest.fail(f"not ready: {client.get('/readyz').text}")
            known = _seed(client)
        loaded = schemathesis.openapi.from_asgi("/openapi.json", app, config=_config())
        _steer(loaded, known)
        yield loaded
    finally:
        shutdown_lifespans()


schema = schemathesis.pytest.from_fixture("keel_schema")


@schema.parametrize()
def test_every_documented_answer_holds(case: schemathesis.Case) -> None:
    case.call_and_validate()
