"""Regression tests for the registry review: inputs that used to 500, crash or store cards
that could never be read back are now clean 400s (or 409s), CLI messages, or round-trip."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from keel.registry import normalize as nz
from keel.registry.cards import card_document, load_card, parse_card
from keel.sdk.registry import parse_gate
from tests.fakes.server import serve_on_loopback
from tests.registry.test_api import ALICE, BOB, R, card, invoke, registry_app

YAML = {"content-type": "application/yaml", **ALICE}


@pytest.fixture
async def client(keel_home: Path) -> Any:
    app, _ = registry_app(keel_home)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://keel") as found:
        found.app = app  # type: ignore[attr-defined]
        yield found


@pytest.fixture
def served(keel_home: Path) -> Iterator[str]:
    app, _ = registry_app(keel_home)
    with serve_on_loopback(app) as url:
        yield url


def error(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    body: dict[str, Any] = response.json()["error"]
    assert body["type"] == "invalid_request_error"
    return body


# -- 1: numbers round-trip in plain decimal form ------------------------------------------


def test_exponent_numbers_round_trip() -> None:
    parsed = parse_card({"name": "x", "benchmark": {"latency": 1e-7, "score": 1e16}})
    assert parsed.benchmark.original == {"latency": "0.0000001", "score": "10000000000000000"}
    assert parse_card(card_document(parsed)) == parsed
    assert nz.parse_duration_ms("1e-7") == pytest.approx(1e-7)
    assert nz.parse_count("1.5E3") == 1500


# -- 2: YAML and JSON safety ------------------------------------------------------------------

BILLION_LAUGHS = "name: bomb\na0: &a0 [lol, lol, lol]\n" + "".join(
    f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 9)
)


@pytest.mark.parametrize(
    "text",
    [
        "name: n\nx: !!binary aGk=\n",
        "name: n\nx: !!set {a, b}\n",
        "name: n\nx: {1: a, '1': b}\n",
        "name: n\nfoo: &a [*a]\n",
        BILLION_LAUGHS,
        'name: "\\ud800"\n',
        "name: n\nlimits:\n  max_input_tokens: .inf\n",
        "name: n\nbenchmark:\n  latency: .nan\n",
    ],
)
async def test_unsafe_yaml_is_400(client: httpx.AsyncClient, text: str) -> None:
    response = await client.post(f"{R}/models", content=text.encode(), headers=YAML)
    error(response)


async def test_yaml_dates_stay_text(client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"{R}/models", content=b"name: n\nreleased: 2024-01-01\n", headers=YAML
    )
    assert response.status_code == 201, response.text
    assert response.json()["card"]["extra"] == {"released": "2024-01-01"}


@pytest.mark.parametrize(
    "body",
    [
        b'{"name": "n", "x": NaN}',
        b'{"name": "n", "benchmark": {"cost": Infinity}}',
        b'{"name": "n", "x": 1e999}',
        b'{"name": "n", "x": "\\ud800"}',
        b'{"name": "n", "limits": {"max_input_tokens": 100000000000000000000}}',
    ],
)
async def test_non_json_values_in_json_bodies_are_400(
    client: httpx.AsyncClient, body: bytes
) -> None:
    error(await client.post(f"{R}/models", content=body, headers=ALICE))


def test_extra_values_must_be_json() -> None:
    with pytest.raises(ValidationError, match="extra"):
        parse_card({"name": "x", "extra": {"s": {1, 2}}})
    with pytest.raises(ValidationError, match="extra"):
        parse_card({"name": "x", "unknown": b"bytes"})


# -- 3: non-finite and huge numbers ----------------------------------------------------------


def test_counts_are_capped_and_finite() -> None:
    with pytest.raises(ValueError, match="at most"):
        nz.parse_count(10**20)
    with pytest.raises(ValueError):
        nz.parse_count(float("inf"))
    with pytest.raises(ValueError):
        nz.parse_duration_ms(float("nan"))
    with pytest.raises(ValueError):
        nz.parse_usd_per_1m_tokens("9" * 400)
    assert nz.parse_count(2**31 - 1) == 2**31 - 1
    # Prose never raises: an out-of-range amount states no limit.
    assert nz.parse_constraint("max 10^23 tokens").max_input_tokens is None
    assert nz.parse_constraint("max input 100000000000000000000000 tokens").max_input_tokens is None
    with pytest.raises(ValidationError, match=r"limits\.max_input_tokens"):
        load_card('{"name": "x", "limits": {"max_input_tokens": 100000000000000000000}}')


async def test_explicit_huge_limit_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"{R}/models", json={"name": "big", "limits": {"max_input_tokens": 10**20}}
    )
    assert error(response)["param"] == "limits.max_input_tokens"


# -- 4 and 5: path, query and body bounds -----------------------------------------------------


async def test_bounds_on_paths_queries_and_bodies(client: httpx.AsyncClient) -> None:
    assert (await client.post(f"{R}/models", json=card(), headers=ALICE)).status_code == 201
    too_big = str(2**31)
    checks = [
        ("GET", f"{R}/models/curie/versions/²", None, 404),  # an alias nobody set
        ("GET", f"{R}/models/curie/versions/{too_big}", None, None),
        ("GET", f"{R}/models/curie/diff?from=1&to=²", None, 404),
        ("GET", f"{R}/models/curie/diff?from=1&to={too_big}", None, None),
        ("GET", f"{R}/models/curie/export?version={too_big}", None, None),
        ("PUT", f"{R}/models/curie/aliases/x", {"version": 2**31, "reason": "r"}, None),
        ("PUT", f"{R}/models/curie/aliases/{'a' * 65}", {"version": 1, "reason": "r"}, None),
        ("PUT", f"{R}/models/curie/aliases/a%00b", {"version": 1, "reason": "r"}, None),
        ("POST", f"{R}/models/curie/promotions", {"version": 2**31, "stage": "staging"}, None),
        (
            "POST",
            f"{R}/models/curie/promotions",
            {"version": 1, "stage": "staging", "expires_in_s": 10**12},
            None,
        ),
        ("POST", f"{R}/models/curie/archive", {"version": 2**31}, None),
        (
            "POST",
            f"{R}/models/curie/versions/{too_big}/evaluations",
            {"metric": "a", "value": 1},
            None,
        ),
        ("POST", f"{R}/models/curie/versions/1/evaluations", {"metric": "a\x00", "value": 1}, None),
        ("GET", f"{R}/promotions?model=a%00", None, None),
        ("GET", "/v1/keel/lineage/data%00set/x", None, None),
        (
            "POST",
            "/v1/keel/lineage/links",
            {
                "upstream": {"kind": "dataset", "id": "x" * 256},
                "downstream": {"kind": "model_version", "id": "curie@1"},
                "relation": "trained_on",
            },
            None,
        ),
        (
            "POST",
            "/v1/keel/lineage/links",
            {
                "upstream": {"kind": "model_version", "id": "curie@9999999999999999999"},
                "downstream": {"kind": "dataset", "id": "x"},
                "relation": "evaluated_on",
            },
            None,
        ),
        ("POST", f"{R}/models", card(name="team/diff"), None),
        ("POST", f"{R}/models", card(name="x" * 201), None),
        ("POST", f"{R}/models", card(name="a\x00b"), None),
        ("POST", f"{R}/models", card(name="n", gateway_model="g" * 256), None),
    ]
    for method, url, body, status in checks:
        response = await client.request(method, url, json=body, headers=BOB)
        expected = status or 400
        assert response.status_code == expected, (method, url, response.status_code, response.text)


async def test_nan_in_gate_and_evaluation_bodies_is_400(client: httpx.AsyncClient) -> None:
    await client.post(f"{R}/models", json=card(), headers=ALICE)
    gate = b'[{"metric": "accuracy", "op": ">=", "threshold": NaN}]'
    put = await client.put(
        f"{R}/models/curie/gates/staging",
        content=gate,
        headers={"content-type": "application/json", **BOB},
    )
    error(put)


# -- 6: datetimes out of range ----------------------------------------------------------------


@pytest.mark.parametrize("time", ["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00"])
async def test_alias_at_out_of_range_time_is_400(client: httpx.AsyncClient, time: str) -> None:
    await client.post(f"{R}/models", json=card(), headers=ALICE)
    response = await client.get(f"{R}/models/curie/aliases/x/at", params={"time": time})
    assert error(response)["param"] == "time"


# -- 7: gateway model ids -------------------------------------------------------------------


async def test_a_gateway_model_id_cannot_be_registered(client: httpx.AsyncClient) -> None:
    app = client.app  # type: ignore[attr-defined]
    gateway_ids = {"gpt-gateway"}
    app.state.keel.router = SimpleNamespace(has=lambda name: name in gateway_ids)
    response = await client.post(f"{R}/models", json=card(name="gpt-gateway"), headers=ALICE)
    assert response.status_code == 409, response.text
    assert "gateway" in response.json()["error"]["message"]
    other = await client.post(f"{R}/models", json=card(name="other"), headers=ALICE)
    assert other.status_code == 201, other.text


# -- 8 and 9: CLI, SDK and small things ---------------------------------------------------------


def test_parse_gate_refuses_non_finite() -> None:
    for text in ("accuracy>=nan", "accuracy>=inf"):
        with pytest.raises(ValueError, match="finite"):
            parse_gate(text)


def test_cli_reports_unreadable_cards_and_bad_numbers(tmp_path: Path) -> None:
    latin = tmp_path / "card.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    url = ["--url", "http://127.0.0.1:9"]
    result = invoke("add", str(latin), *url)
    assert result.exit_code == 1 and "Error:" in result.output and "UTF-8" in result.output
    nan = invoke("evaluate", "curie", "1", "accuracy", "nan", *url)
    assert nan.exit_code == 1 and "finite" in nan.output
    gate = invoke("gates", "curie", "staging", "--gate", "accuracy>=inf", *url)
    assert gate.exit_code == 1 and "finite" in gate.output
    assert "archived" not in invoke("promote", "--help").output


def test_cli_sends_any_non_json_file_as_yaml(served: str, tmp_path: Path) -> None:
    text = tmp_path / "card.txt"
    text.write_text("name: texty\ndescription: a card in a .txt file\n", encoding="utf-8")
    who = ["--url", served, "--actor", "alice", "--roles", "developer"]
    added = invoke("add", str(text), *who)
    assert added.exit_code == 0 and "texty@1" in added.output, added.output
    broken = tmp_path / "bad.json"
    broken.write_text("{not json", encoding="utf-8")
    refused = invoke("add", str(broken), *who)
    assert refused.exit_code == 1 and "Error:" in refused.output


async def test_an_unchanged_card_answers_200(client: httpx.AsyncClient) -> None:
    await client.post(f"{R}/models", json=card(), headers=ALICE)
    same = await client.post(f"{R}/models/curie/versions", json=card(), headers=ALICE)
    assert same.status_code == 200, same.text
    assert same.json()["created"] is False
    changed = await client.post(f"{R}/models/curie/versions", json=card(description="2"))
    assert changed.status_code == 201


def test_finite_check_helpers() -> None:
    assert math.isfinite(nz.parse_fraction("1e-2"))
