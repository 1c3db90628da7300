"""Hostile input to every /v1/keel/{orgs,teams,users,keys,usage,audit,requests} route, sent as
an admin, on SQLite and on PostgreSQL: NUL bytes, 10 KB strings, wrong JSON types, nulls, huge
and non-finite numbers, far-future and malformed times, SQL-looking text. Every answer is a
2xx, or a 4xx with an OpenAI-style error body; never a 500. Each test sends its whole batch and
then names every call that broke the rule, with the response it got."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, ValidationError

from keel.governance import config
from keel.server import create_app
from tests.conftest import REDIS_URL, remote_settings, running_app

ADMIN_KEY = "bad-input-admin-key-0123456789abcdef"
HEADERS = {"authorization": f"Bearer {ADMIN_KEY}"}
K = "/v1/keel"
SQL = "x' OR '1'='1'; DROP TABLE principals; --"
INF, NAN = float("inf"), float("nan")
BOUNDS = "at-the-bounds"  # the largest limits accepted: these must succeed

# Text in a JSON body. json.dumps writes a lone surrogate as "\ud800", which the server reads
# back as a str that no database can store.
TEXT: dict[str, Any] = {
    "nul": "a\x00b",
    "10kb": "x" * 10_000,
    "sql": SQL,
    "surrogate": "\ud800",
    "empty": "",
}
TYPES: dict[str, Any] = {"int": 7, "float": 1.5, "list": ["a"], "object": {"a": 1}, "bool": True}
NULL: dict[str, Any] = {"null": None}
NUMBERS: dict[str, Any] = {
    "10**30": 10**30,
    "1e308": 1e308,
    "negative": -1,
    "fraction": 1.5,
    "inf-text": "inf",
    "nan-text": "nan",
    "Infinity": INF,  # the bare JSON literal, which Python's parser accepts
    "NaN": NAN,
    "word": "ten",
    "null": None,
}
TIMES: dict[str, Any] = {
    "year-9999": "9999-12-31T23:59:59Z",
    "year-9999-west": "9999-12-31T23:59:59-05:00",
    "year-10000": "10000-01-01T00:00:00Z",
    "year-1-east": "0001-01-01T00:00:00+05:00",
    "month-13": "2026-13-45T99:99:99",
    "word": "tomorrow",
    "nul": "2026-01-01T00:00:00\x00",
    "epoch-10**20": 10**20,
    "epoch-1e308": 1e308,
    "epoch-inf": "inf",
    "epoch-Infinity": INF,
}
LIMITS: dict[str, Any] = {
    "null": None,
    "text": "fast",
    "list": [1],
    "unknown": {"rps": 1},
    **{f"rpm={label}": {"rpm": value} for label, value in NUMBERS.items()},
    **{f"usd_per_day={label}": {"usd_per_day": value} for label, value in NUMBERS.items()},
    "tpm=10**16": {"tpm": 10**16},
    "tokens_per_day=1e308": {"tokens_per_day": 1e308},
    "usd_per_month=Infinity": {"usd_per_month": INF},
    "usd_per_month=10**10": {"usd_per_month": 10**10},
    BOUNDS: {"rpm": 10**15, "tokens_per_day": 10**15, "usd_per_month": 10**9},
}
# Already percent-encoded: invalid UTF-8 (a lone byte, an encoded surrogate) and the rest.
RAW_QUERY = {
    "nul": "%00",
    "in-nul": "a%00b",
    "10kb": "x" * 10_000,
    "sql": quote(SQL, safe=""),
    "byte-ff": "%FF",
    "surrogate": "%ED%A0%80",
    "empty": "",
    "unicode": quote("é漢🙂", safe=""),
}
RAW_PATH = {**{k: v for k, v in RAW_QUERY.items() if k != "empty"}, "dots": "..%2F..", "sp": "%20"}
RAW_NUMBER = {
    "inf": "inf",
    "nan": "nan",
    "1e308": "1e308",
    "10**30": str(10**30),
    "2**63": str(2**63),
    "2**63-1": str(2**63 - 1),
    "negative": "-1",
    "fraction": "1.5",
    "word": "ten",
    "empty": "",
    "nul": "%00",
}


@dataclass(frozen=True)
class Call:
    label: str
    method: str
    url: str  # path and query, already percent-encoded
    body: Any = ...  # ...: no body; bytes: sent as they are; anything else: as JSON
    must_succeed: bool = False


def fields(
    method: str,
    url: str,
    name: str,
    values: dict[str, Any],
    base: dict[str, Any] | None = None,
    fresh: Callable[[], str] | None = None,
) -> list[Call]:
    """One call per value of the body field `name`; the rest of the body as in `base`, with a
    new `name` each time when `fresh` is given (so creations don't collide)."""
    calls = []
    for label, value in values.items():
        body = {**(base or {}), name: value}
        if fresh is not None:
            body["name"] = fresh()
        ok = name == "limits" and label == BOUNDS
        calls.append(Call(f"{name}={label}", method, url, body, ok))
    return calls


def queries(url: str, name: str, values: dict[str, str]) -> list[Call]:
    return [Call(f"?{name}={label}", "GET", f"{url}?{name}={raw}") for label, raw in values.items()]


def paths(method: str, template: str, body: Any = ...) -> list[Call]:
    return [
        Call(f"path={label}", method, template.format(raw), body) for label, raw in RAW_PATH.items()
    ]


def junk_bodies(method: str, url: str) -> list[Call]:
    """Bodies that are not the object the route takes, or not JSON at all."""
    raw: dict[str, bytes] = {
        "null": b"null",
        "array": b"[]",
        "string": b'"name"',
        "number": b"1e999",
        "broken": b'{"name": ',
        "not-utf8": b'{"name": "\xff"}',
        "nul-byte": b'{"name": "a\x00b"}',
        "deep-nesting": b"[" * 100_000 + b"]" * 100_000,
        "empty": b"",
    }
    calls = [Call(f"body={label}", method, url, body) for label, body in raw.items()]
    return [*calls, Call("body=extra-field", method, url, {"bogus": 1})]


async def send(client: httpx.AsyncClient, call: Call) -> httpx.Response:
    headers = dict(HEADERS)
    content: bytes | None = None
    if isinstance(call.body, bytes):
        content = call.body
    elif call.body is not ...:
        content = json.dumps(call.body).encode()  # Infinity, NaN and "\ud800" as they are
    if content is not None:
        headers["content-type"] = "application/json"
    return await client.request(call.method, call.url, content=content, headers=headers)


def problem(call: Call, response: httpx.Response) -> str | None:
    """What is wrong with the answer to `call`, if anything."""
    status = response.status_code
    where = f"{call.method} {call.url[:70]} [{call.label}]"
    if status >= 500 or (call.must_succeed and status >= 300):
        return f"{where}: {status} {response.text[:160]}"
    if status >= 400:
        try:
            error = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            return f"{where}: {status} without an OpenAI-style error body: {response.text[:160]}"
        if set(error) != {"message", "type", "param", "code"} or not isinstance(
            error["message"], str
        ):
            return f"{where}: {status} with an odd error body: {response.text[:160]}"
    return None


async def check(client: httpx.AsyncClient, calls: list[Call]) -> None:
    problems = [found for call in calls if (found := problem(call, await send(client, call)))]
    # Nothing a call stored may break the reads that follow it.
    for url in (f"{K}/orgs", f"{K}/teams", f"{K}/users", f"{K}/keys", f"{K}/usage", f"{K}/audit"):
        response = await client.get(url, headers=HEADERS)
        if response.status_code != 200:
            problems.append(f"afterwards GET {url}: {response.status_code} {response.text[:160]}")
    assert not problems, f"{len(problems)} of {len(calls)} calls:\n" + "\n".join(problems)


@dataclass
class Server:
    app: FastAPI
    client: httpx.AsyncClient
    key_id: str
    created: int = 0

    def fresh(self) -> str:
        self.created += 1
        return f"new-{self.created}"


@pytest.fixture
async def server(tmp_path: Path, database_url: str) -> AsyncIterator[Server]:
    """The app with auth required, called as its admin; with PostgreSQL, quota counters are
    in Redis. Team ml holds user alice, who has one key."""
    extra: dict[str, Any] = {"database_url": database_url}
    if database_url.startswith("postgresql"):
        extra["redis_url"] = REDIS_URL
    settings = remote_settings(tmp_path, [], auth={"admin_key": ADMIN_KEY}, **extra)
    async with running_app(settings) as (app, _):
        # Its own client: a 500 comes back as the response the app sends, not as the exception.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://keel") as client:
            for url, body in (
                (f"{K}/teams", {"name": "ml"}),
                (f"{K}/users", {"name": "alice", "team": "ml"}),
                (f"{K}/keys", {"user": "alice"}),
            ):
                created = await client.post(url, json=body, headers=HEADERS)
                assert created.status_code == 201, created.text
            yield Server(app, client, created.json()["id"])


# -- the routes ---------------------------------------------------------------------------------

EXERCISED = {
    *(("GET", f"{K}/{name}") for name in ("orgs", "teams", "users", "keys", "usage", "requests")),
    *(("POST", f"{K}/{name}") for name in ("orgs", "teams", "users", "keys")),
    *(
        (method, f"{K}/{name}/{{name}}")
        for method in ("GET", "PATCH")
        for name in ("teams", "users")
    ),
    ("GET", f"{K}/keys/{{key_id}}"),
    ("POST", f"{K}/keys/{{key_id}}/revoke"),
    ("POST", f"{K}/keys/{{key_id}}/rotate"),
    ("GET", f"{K}/audit"),
    ("GET", f"{K}/audit/export"),
    ("POST", f"{K}/audit/verify"),
    ("GET", f"{K}/requests/{{request_id}}"),
    ("GET", f"{K}/requests/{{request_id}}/trace"),
}


def test_every_route_of_these_families_is_exercised(tmp_path: Path) -> None:
    app = create_app(remote_settings(tmp_path, []))
    family = re.compile(rf"{K}/(orgs|teams|users|keys|usage|audit|requests)\b")
    routes = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
        if family.match(path)
    }
    assert routes == EXERCISED


LISTS = {f"[{label}]": [value] for label, value in TEXT.items()} | {"[int]": [1], "[null]": [None]}
REGIONS = TEXT | TYPES | LISTS | {"101": ["eu"] * 101}


async def test_orgs(server: Server) -> None:
    calls = [
        *fields("POST", f"{K}/orgs", "name", TEXT | TYPES | NULL),
        *junk_bodies("POST", f"{K}/orgs"),
        Call("?junk", "GET", f"{K}/orgs?name=%00&limit=inf"),
    ]
    await check(server.client, calls)


async def test_teams(server: Server) -> None:
    create, fresh = f"{K}/teams", server.fresh
    calls = [
        *fields("POST", create, "name", TEXT | TYPES | NULL),
        *fields("POST", create, "org", TEXT | TYPES, fresh=fresh),
        *fields("POST", create, "allowed_regions", REGIONS, fresh=fresh),
        *fields("POST", create, "limits", LIMITS, fresh=fresh),
        *junk_bodies("POST", create),
        *paths("GET", f"{K}/teams/{{}}"),
        *paths("PATCH", f"{K}/teams/{{}}", {"limits": {"rpm": 1}}),
        *fields("PATCH", f"{K}/teams/ml", "allowed_regions", REGIONS | NULL),
        *fields("PATCH", f"{K}/teams/ml", "limits", LIMITS),
        *junk_bodies("PATCH", f"{K}/teams/ml"),
    ]
    await check(server.client, calls)


async def test_users(server: Server) -> None:
    create, fresh, alice = f"{K}/users", server.fresh, f"{K}/users/alice"
    calls = [
        *fields("POST", create, "name", TEXT | TYPES | NULL),
        *[
            call
            for name in ("kind", "role", "team", "org", "email")
            for call in fields("POST", create, name, TEXT | TYPES, fresh=fresh)
        ],
        *fields("POST", create, "limits", LIMITS, fresh=fresh),
        *junk_bodies("POST", create),
        *queries(create, "team", RAW_QUERY),
        *queries(create, "kind", RAW_QUERY),
        *paths("GET", f"{K}/users/{{}}"),
        *paths("PATCH", f"{K}/users/{{}}", {"role": "viewer"}),
        *[
            call
            for name in ("role", "team", "email")
            for call in fields("PATCH", alice, name, TEXT | TYPES | NULL)
        ],
        *fields("PATCH", alice, "limits", LIMITS),
        *fields("PATCH", alice, "disabled", TEXT | TYPES | NULL | {"text-true": "true", "one": 1}),
        *junk_bodies("PATCH", alice),
    ]
    await check(server.client, calls)


async def test_keys(server: Server) -> None:
    keys, key, alice = f"{K}/keys", f"{K}/keys/{server.key_id}", {"user": "alice"}
    lists = TEXT | TYPES | LISTS
    cidrs = {"bad-cidr": ["999.1.1.1/99"], "v6-200": ["::/200"], "101": ["10.0.0.0/8"] * 101}
    calls = [
        *[
            call
            for name, values in (
                ("name", TEXT | TYPES | NULL),
                ("user", TEXT | TYPES),
                ("environment", TEXT | TYPES),
                ("role", TEXT | TYPES),
                ("models", lists | {"201": ["m"] * 201}),
                ("routes", lists | {"unknown": ["admin"]}),
                ("ip_allowlist", lists | cidrs),
                ("expires_at", TIMES),
                ("expires_in_s", NUMBERS),
                ("limits", LIMITS),
            )
            for call in fields("POST", keys, name, values, base=alice)
        ],
        Call(
            "both-expiries",
            "POST",
            keys,
            {**alice, "expires_at": TIMES["year-9999"], "expires_in_s": 60},
        ),
        *junk_bodies("POST", keys),
        *queries(keys, "user", RAW_QUERY),
        *paths("GET", f"{keys}/{{}}"),
        *paths("POST", f"{keys}/{{}}/revoke"),
        *paths("POST", f"{keys}/{{}}/rotate"),
        *fields("POST", f"{key}/rotate", "overlap_s", NUMBERS),
        *[call for call in junk_bodies("POST", f"{key}/rotate") if call.label != "body=null"],
        Call("revoke", "POST", f"{key}/revoke", {"junk": [None]}),
        Call("revoke-again", "POST", f"{key}/revoke"),
    ]
    await check(server.client, calls)


async def test_usage(server: Server) -> None:
    url = f"{K}/usage"
    calls = [
        call for name in ("key", "user", "team", "model") for call in queries(url, name, RAW_QUERY)
    ]
    calls.append(Call("?all", "GET", f"{url}?key=%00&user={'x' * 10_000}&team=%FF&model=%ED%A0%80"))
    await check(server.client, calls)


async def test_limits_at_their_bounds_are_usable(server: Server) -> None:
    """The largest limits accepted are enforceable too: usage reads them back."""
    top: dict[str, float] = {"rpm": 10**15, "tpm": 10**15, "tokens_per_day": 10**15}
    top |= {"usd_per_day": 10**9, "usd_per_month": 1e9}
    calls = [
        Call("team", "POST", f"{K}/teams", {"name": "big", "limits": top}, True),
        Call("user", "POST", f"{K}/users", {"name": "bigger", "team": "big", "limits": top}, True),
        Call("key", "POST", f"{K}/keys", {"user": "bigger", "limits": top}, True),
        Call("usage", "GET", f"{K}/usage?user=bigger&team=big", must_succeed=True),
    ]
    await check(server.client, calls)
    for limits, param in (({"usd_per_day": "inf"}, "usd_per_day"), ({"tpm": 10**16}, "tpm")):
        refused = await server.client.post(
            f"{K}/teams", json={"name": server.fresh(), "limits": limits}, headers=HEADERS
        )
        assert (refused.status_code, refused.json()["error"]["param"]) == (400, f"limits.{param}")


@pytest.mark.parametrize(
    ("section", "data", "field"),
    [
        (config.LimitSet, {"rpm": "inf"}, "rpm"),
        (config.LimitSet, {"tpm": 1e308}, "tpm"),
        (config.LimitSet, {"tokens_per_day": 10**15 + 1}, "tokens_per_day"),
        (config.LimitSet, {"usd_per_day": INF}, "usd_per_day"),
        (config.LimitSet, {"usd_per_day": "nan"}, "usd_per_day"),
        (config.LimitSet, {"usd_per_month": 1e308}, "usd_per_month"),
        (config.QuotaConfig, {"models": {"a\x00b": {}}}, "models"),
        (
            config.ResidencyConfig,
            {"default_allowed_regions": ["eu\ud800"]},
            "default_allowed_regions",
        ),
        (config.OidcIssuerConfig, {"issuer": "a\x00", "jwks_url": "http://x/"}, "issuer"),
        (config.OidcIssuerConfig, {"issuer": "i", "jwks_file": "/tmp/a\x00b"}, "jwks_file"),
        (config.AuthConfig, {"admin_key": "k\x00"}, "admin_key"),
    ],
)
def test_config_sections_name_the_bad_field(
    section: type[BaseModel], data: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        section.model_validate(data)
    assert refused.value.errors()[0]["loc"] == (field,)


async def test_audit(server: Server) -> None:
    times = {**RAW_QUERY, **{label: quote(str(value), safe="") for label, value in TIMES.items()}}
    calls = [
        call
        for url in (f"{K}/audit", f"{K}/audit/export")
        for name, values in (
            ("since", times),
            ("until", times),
            ("actor", RAW_QUERY),
            ("action", RAW_QUERY),
            ("after_seq", RAW_NUMBER),
        )
        for call in queries(url, name, values)
    ]
    calls += queries(f"{K}/audit", "limit", RAW_NUMBER)
    calls += junk_bodies("POST", f"{K}/audit/verify")
    await check(server.client, calls)
    # The largest seq starts a page that holds nothing; one more is refused, naming the param.
    last = await server.client.get(f"{K}/audit?after_seq={2**63 - 1}", headers=HEADERS)
    assert (last.status_code, last.json()["data"]) == (200, [])
    beyond = await server.client.get(f"{K}/audit/export?after_seq={2**63}", headers=HEADERS)
    assert (beyond.status_code, beyond.json()["error"]["param"]) == (400, "after_seq")


async def test_requests(server: Server) -> None:
    calls = [
        *queries(f"{K}/requests", "model", RAW_QUERY),
        *queries(f"{K}/requests", "limit", RAW_NUMBER),
        *paths("GET", f"{K}/requests/{{}}"),
        *paths("GET", f"{K}/requests/{{}}/trace"),
    ]
    await check(server.client, calls)
    for url, param in (
        (f"{K}/requests?model=%00", "model"),
        (f"{K}/requests/a%00b", "request_id"),
        (f"{K}/requests/a%00b/trace", "request_id"),
    ):
        refused = await server.client.get(url, headers=HEADERS)
        assert (refused.status_code, refused.json()["error"]["param"]) == (400, param)
    missing = await server.client.get(f"{K}/requests/{'x' * 10_000}", headers=HEADERS)
    assert missing.status_code == 404
    missing = await server.client.get(f"{K}/requests/{'x' * 10_000}/trace", headers=HEADERS)
    assert missing.status_code == 404
