"""The edge of the inference routes: what is refused before anything is sent upstream.

OpenAI's parameters are strictly typed and range-checked for every provider (a 400 naming the
parameter by its path in the body); numbers no JSON encoder on the way could write back (beyond
64 bits, not finite) are refused wherever they are; no body, however strange, fails later in a
serializer; and providers that translate refuse, by name, the shapes they cannot carry.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import flushed_records, running_app
from tests.fakes.openai import FakeOpenAI
from tests.server.wire_helpers import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    JSON,
    USER,
    canonical,
    upstream_view,
    wire_settings,
)


@pytest.fixture
async def keel(
    keel_home: Path, fake_openai_url: str
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with running_app(wire_settings(keel_home, fake_openai_url)) as running:
        yield running


MESSAGES = [USER]

REFUSED: list[tuple[str, dict[str, Any], str]] = [
    # Strict types: OpenAI's booleans, integers and strings are not coerced.
    (CHAT, {"stream": "yes"}, "stream"),
    (CHAT, {"n": "2"}, "n"),
    (CHAT, {"n": 2.0}, "n"),
    (CHAT, {"max_tokens": True}, "max_tokens"),
    (CHAT, {"logprobs": "yes"}, "logprobs"),
    (CHAT, {"logprobs": 1}, "logprobs"),
    (CHAT, {"temperature": "0.5"}, "temperature"),
    (CHAT, {"temperature": True}, "temperature"),
    (CHAT, {"seed": 1.5}, "seed"),
    (CHAT, {"user": 7}, "user"),
    (CHAT, {"parallel_tool_calls": "false"}, "parallel_tool_calls"),
    (CHAT, {"store": 1}, "store"),
    (CHAT, {"stop": 5}, "stop"),
    (CHAT, {"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    (CHAT, {"logit_bias": {"1": "5"}}, "logit_bias.1"),
    (CHAT, {"metadata": {"team": 1}}, "metadata.team"),
    (CHAT, {"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    (
        CHAT,
        {"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
        "messages.0.content.0.text",
    ),
    (
        CHAT,
        {"messages": [{"role": "user", "content": [{"type": "video"}]}]},
        "messages.0.content.0",
    ),
    (CHAT, {"tools": [{"type": "web_search"}]}, "tools.0"),
    (CHAT, {"tools": [{"type": "custom"}]}, "tools.0.custom"),
    (CHAT, {"response_format": {"type": "json"}}, "response_format.type"),
    # OpenAI's documented ranges.
    (CHAT, {"temperature": 2.5}, "temperature"),
    (CHAT, {"temperature": -0.1}, "temperature"),
    (CHAT, {"top_p": 1.01}, "top_p"),
    (CHAT, {"n": 0}, "n"),
    (CHAT, {"n": 129}, "n"),
    (CHAT, {"max_tokens": 0}, "max_tokens"),
    (CHAT, {"max_completion_tokens": 0}, "max_completion_tokens"),
    (CHAT, {"presence_penalty": 2.01}, "presence_penalty"),
    (CHAT, {"frequency_penalty": -3}, "frequency_penalty"),
    (CHAT, {"top_logprobs": 21}, "top_logprobs"),
    (CHAT, {"top_logprobs": -1}, "top_logprobs"),
    (CHAT, {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    (CHAT, {"logit_bias": {"1": 101}}, "logit_bias.1"),
    (CHAT, {"logit_bias": {"1": -100.5}}, "logit_bias.1"),
    (CHAT, {"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    (CHAT, {"metadata": {"k" * 65: "v"}}, "metadata." + "k" * 65),
    (CHAT, {"metadata": {"k": "v" * 513}}, "metadata.k"),
    (CHAT, {"messages": []}, "messages"),
    (COMPLETIONS, {"prompt": []}, "prompt"),
    (COMPLETIONS, {"prompt": [[1, "a"]]}, "prompt.0.1"),
    (COMPLETIONS, {"prompt": True}, "prompt"),
    (COMPLETIONS, {"logprobs": 6}, "logprobs"),
    (COMPLETIONS, {"best_of": 21}, "best_of"),
    (COMPLETIONS, {"echo": "yes"}, "echo"),
    (COMPLETIONS, {"max_tokens": -1}, "max_tokens"),
    (COMPLETIONS, {"n": 129}, "n"),
    (COMPLETIONS, {"suffix": 1}, "suffix"),
    (EMBEDDINGS, {"input": []}, "input"),
    (EMBEDDINGS, {"input": 5}, "input"),
    (EMBEDDINGS, {"dimensions": 0}, "dimensions"),
    (EMBEDDINGS, {"dimensions": "256"}, "dimensions"),
    (EMBEDDINGS, {"encoding_format": "int8"}, "encoding_format"),
    # Integers no JSON encoder on the way can write, wherever they are.
    (CHAT, {"max_tokens": 10**30}, "max_tokens"),
    (CHAT, {"seed": 2**64}, "seed"),
    (CHAT, {"logit_bias": {"1": -(10**30)}}, "logit_bias.1"),
    (CHAT, {"vendor_option": 2**64}, "vendor_option"),
    (CHAT, {"vendor_option": -(2**63) - 1}, "vendor_option"),
    (CHAT, {"extra": {"a": [1, {"b": 10**40}]}}, "extra.a.1.b"),
    (CHAT, {"messages": [{**USER, "x": 10**30}]}, "messages.0.x"),
    (COMPLETIONS, {"prompt": [1, 2**70]}, "prompt.1"),
    (EMBEDDINGS, {"input": [[1], [2**64]]}, "input.1.0"),
]


def _complete(path: str, fields: dict[str, Any]) -> dict[str, Any]:
    base: dict[str, Any] = {"model": "gpt"}
    if path == CHAT:
        base["messages"] = MESSAGES
    elif path == COMPLETIONS:
        base["prompt"] = "hi"
    else:
        base["input"] = "hi"
    return base | fields


@pytest.mark.parametrize(
    ("path", "fields", "param"),
    REFUSED,
    ids=[f"{path.rsplit('/', 1)[-1]}:{param}:{i}" for i, (path, _, param) in enumerate(REFUSED)],
)
async def test_a_wrong_type_or_range_is_a_400_naming_the_parameter(
    keel: tuple[FastAPI, httpx.AsyncClient],
    fake_openai: FakeOpenAI,
    path: str,
    fields: dict[str, Any],
    param: str,
) -> None:
    _, client = keel
    # json.dumps writes Python's big integers out in full, as a client's encoder may.
    content = json.dumps(_complete(path, fields)).encode()
    response = await client.post(path, content=content, headers=JSON)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert error["message"].startswith(f"{param}: ")
    assert fake_openai.requests == []


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "gpt", "messages": [], "temperature": NaN}',
        b'{"model": "gpt", "messages": [], "temperature": Infinity}',
        b'{"model": "gpt", "messages": [], "extra": [-Infinity]}',
    ],
)
async def test_nan_and_infinity_are_not_json(
    keel: tuple[FastAPI, httpx.AsyncClient], fake_openai: FakeOpenAI, raw: bytes
) -> None:
    _, client = keel
    response = await client.post(CHAT, content=raw, headers=JSON)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
    assert fake_openai.requests == []


@pytest.mark.parametrize(
    ("number", "param"),
    [(b"1e400", "temperature"), (b"-1e999", "vendor.deep.0")],
)
async def test_a_decimal_too_large_to_be_finite_is_a_400(
    keel: tuple[FastAPI, httpx.AsyncClient], fake_openai: FakeOpenAI, number: bytes, param: str
) -> None:
    _, client = keel
    where = b'"temperature": %s' if param == "temperature" else b'"vendor": {"deep": [%s]}'
    raw = b'{"model": "gpt", "messages": [{"role": "user", "content": "x"}], ' + where % number
    response = await client.post(CHAT, content=raw + b"}", headers=JSON)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert fake_openai.requests == []


async def test_an_integer_with_thousands_of_digits_is_a_400(
    keel: tuple[FastAPI, httpx.AsyncClient], fake_openai: FakeOpenAI
) -> None:
    _, client = keel
    raw = b'{"model": "gpt", "messages": [{"role": "user", "content": "x"}], "n": ' + b"9" * 5000
    response = await client.post(CHAT, content=raw + b"}", headers=JSON)
    assert response.status_code == 400
    assert fake_openai.requests == []


def _strange_value(rng: random.Random, depth: int) -> Any:
    kind = rng.randrange(9 if depth < 6 else 6)
    if kind == 0:
        return rng.choice([2**64 - 1, -(2**63), 2**64, -(2**63) - 1, 10**25, 0, -1])
    if kind == 1:
        return rng.choice([0.1, -0.0, 1e308, 5e-324, 1.0, 2.5])
    if kind == 2:
        return rng.choice(["", "\u0000", "\U0001f600", "\u202e", "a" * 300, '"}'])
    if kind == 3:
        return rng.choice([True, False, None])
    if kind in (4, 5):
        return rng.randint(-5, 300)
    if kind in (6, 7):
        return {f"k{i}": _strange_value(rng, depth + 1) for i in range(rng.randrange(4))}
    return [_strange_value(rng, depth + 1) for _ in range(rng.randrange(4))]


def _strange_body(rng: random.Random) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "gpt", "messages": [USER]}
    for name in rng.sample(
        ["temperature", "n", "max_tokens", "logit_bias", "seed", "stop", "vendor", "metadata"],
        k=rng.randrange(1, 4),
    ):
        body[name] = _strange_value(rng, 0)
    if rng.random() < 0.3:
        body["messages"] = [{**USER, "extra": _strange_value(rng, 0)}]
    return body


async def test_no_body_however_strange_fails_in_keel(
    keel: tuple[FastAPI, httpx.AsyncClient], fake_openai: FakeOpenAI
) -> None:
    """Every strange body is either forwarded (and received as sent) or refused with a 400:
    never a 5xx from a serializer further down."""
    app, client = keel
    rng = random.Random(1717)
    bodies = [_strange_body(rng) for _ in range(150)]
    deep: Any = 1
    for _ in range(150):
        deep = [deep]
    bodies.append({"model": "gpt", "messages": [USER], "vendor": deep})
    deeper: Any = 1
    for _ in range(300):
        deeper = {"a": deeper}
    bodies.append({"model": "gpt", "messages": [USER], "vendor": deeper})
    statuses = set()
    for body in bodies:
        fake_openai.requests.clear()
        response = await client.post(CHAT, content=json.dumps(body).encode(), headers=JSON)
        statuses.add(response.status_code)
        assert response.status_code in (200, 400), (body, response.text)
        if response.status_code == 200:
            assert canonical(fake_openai.last.body) == canonical(upstream_view(body))
        else:
            assert fake_openai.requests == []
    assert statuses == {200, 400}  # the bodies exercise both outcomes
    assert all(record["status_code"] != 500 for record in await flushed_records(app))


# --- providers that translate refuse what they cannot carry ---------------------------------------

CUSTOM_TOOL = {"type": "custom", "custom": {"name": "code_exec"}}
CUSTOM_CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [{"id": "c1", "type": "custom", "custom": {"name": "code_exec", "input": "1"}}],
}


@pytest.mark.parametrize("model", ["claude", "gemini", "cohere"])
@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [CUSTOM_TOOL]}, "tools"),
        ({"messages": [USER, CUSTOM_CALL, {"role": "user", "content": "and?"}]}, "messages"),
    ],
)
async def test_a_translating_provider_refuses_custom_tools_by_name(
    keel: tuple[FastAPI, httpx.AsyncClient],
    model: str,
    fields: dict[str, Any],
    param: str,
) -> None:
    _, client = keel
    for stream in (False, True):
        body = {"model": model, "messages": [USER], "stream": stream} | fields
        response = await client.post(CHAT, json=body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["param"], error["code"]) == (param, "unsupported_parameter")
        assert "custom tool" in error["message"]


@pytest.mark.parametrize("prompt", [[1, 2, 3], [[1, 2], [3]]])
async def test_a_chat_only_provider_refuses_token_id_prompts_by_name(
    keel: tuple[FastAPI, httpx.AsyncClient], prompt: list[Any]
) -> None:
    _, client = keel
    response = await client.post(COMPLETIONS, json={"model": "claude", "prompt": prompt})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("prompt", "unsupported_parameter")


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"best_of": 2}, "best_of"),
        ({"top_k": 5}, "top_k"),
        ({"max_tokens": 0}, "max_tokens"),
    ],
)
async def test_a_chat_only_provider_refuses_completion_fields_it_cannot_carry(
    keel: tuple[FastAPI, httpx.AsyncClient], fields: dict[str, Any], param: str
) -> None:
    _, client = keel
    response = await client.post(COMPLETIONS, json={"model": "claude", "prompt": "x", **fields})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
