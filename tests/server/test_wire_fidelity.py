"""Requests reach an OpenAI-compatible upstream as the client sent them.

Each request goes through Keel to the fake OpenAI server, which records the body it received;
that body must equal the client's, byte for byte in meaning: the same keys, explicit nulls kept,
integers still integers (`1` is not `1.0`), unknown fields untouched. Only `model` changes (to
the deployment's upstream name) and, on streams, `stream_options.include_usage` (Keel needs the
usage for accounting); text a guardrail masked is sent masked. Answers are compared through the
`openai` SDK's typed objects, through Keel and straight from the fake. The edge (what is refused
before anything is sent) is tested in test_request_edge.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI

from tests.conftest import remote_settings, running_app
from tests.fakes.openai import FakeOpenAI
from tests.server.wire_helpers import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    UPSTREAM_MODEL,
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


CHAT_BODIES: dict[str, dict[str, Any]] = {
    "tool-call history with null content and refusal": {
        "messages": [
            {"role": "developer", "content": "Use the tools."},
            USER,
            {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "weather",
                    "description": "Weather for a city",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string", "maxLength": 100}},
                        "required": ["city"],
                        "additionalProperties": False,
                    },
                    "strict": True,
                },
            }
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
    },
    "integers stay integers": {
        "messages": [USER],
        "temperature": 1,
        "top_p": 1,
        "presence_penalty": 0,
        "frequency_penalty": -1,
        "logit_bias": {"50256": -100, "1734": 5, "198": 2.5},
        "seed": 42,
        "n": 2,
        "max_completion_tokens": 300,
    },
    "decimals stay decimals": {
        "messages": [USER],
        "temperature": 1.0,
        "top_p": 0.95,
        "presence_penalty": 0.0,
        "frequency_penalty": 1.5,
    },
    "explicit nulls": {
        "messages": [{**USER, "name": None}],
        "temperature": None,
        "stop": None,
        "seed": None,
        "max_tokens": None,
        "response_format": None,
        "user": None,
    },
    "stream_options without stream": {
        "messages": [USER],
        "stream": False,
        "stream_options": {"include_usage": True},
    },
    "custom tools": {
        "messages": [
            USER,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_2",
                        "type": "custom",
                        "custom": {"name": "code_exec", "input": "print(1)"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_2", "content": "1"},
        ],
        "tools": [
            {
                "type": "custom",
                "custom": {
                    "name": "code_exec",
                    "description": "Runs Python",
                    "format": {
                        "type": "grammar",
                        "grammar": {"syntax": "lark", "definition": "start: /.+/"},
                    },
                },
            },
            {"type": "custom", "custom": {"name": "free_text"}},
        ],
        "tool_choice": {"type": "custom", "custom": {"name": "code_exec"}},
    },
    "json_schema response format": {
        "messages": [USER],
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "weather",
                "description": "The forecast",
                "strict": True,
                "schema": {
                    "type": "object",
                    "properties": {"celsius": {"type": "number", "minimum": -90}},
                    "required": ["celsius"],
                    "additionalProperties": False,
                },
            },
        },
    },
    "content parts": {
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {
                "role": "user",
                "name": "ada",
                "content": [
                    {"type": "text", "text": "What is in these?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"},
                    },
                    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                    {"type": "file", "file": {"file_id": "file-abc123"}},
                ],
            },
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}]},
            {"role": "user", "content": "Please."},
        ],
    },
    "the rest of OpenAI's parameters": {
        "messages": [USER],
        "stop": ["\n\n", "END"],
        "logprobs": True,
        "top_logprobs": 3,
        "max_tokens": 64,
        "user": "user-123",
        "metadata": {"team": "search", "run": "7"},
        "store": True,
        "service_tier": "auto",
        "reasoning_effort": "low",
        "verbosity": "medium",
        "modalities": ["text"],
        "prediction": {"type": "content", "content": "It is sunny"},
        "prompt_cache_key": "weather-v1",
        "safety_identifier": "hash-of-user",
        "web_search_options": {"search_context_size": "low"},
        "functions": [{"name": "legacy", "parameters": {"type": "object"}}],
        "function_call": "none",
    },
    "fields Keel does not know": {
        "messages": [USER],
        "top_k": 40,
        "repetition_penalty": 1.1,
        "chat_template_kwargs": {"enable_thinking": False, "depth": [1, 2.0, None, "x"]},
        "largest_unsigned": 18446744073709551615,
        "smallest_signed": -9223372036854775808,
        "tiny": 5e-324,
    },
}


@pytest.mark.parametrize("body", CHAT_BODIES.values(), ids=CHAT_BODIES.keys())
async def test_a_chat_request_reaches_the_upstream_as_sent(
    keel: tuple[FastAPI, httpx.AsyncClient], fake_openai: FakeOpenAI, body: dict[str, Any]
) -> None:
    _, client = keel
    sent = {"model": "gpt", **body}
    response = await client.post("/v1/chat/completions", json=sent)
    assert response.status_code == 200, response.text
    assert canonical(fake_openai.last.body) == canonical(upstream_view(sent))


@pytest.mark.parametrize(
    ("stream_options", "upstream_stream_options"),
    [
        (None, {"include_usage": True}),
        ({"include_usage": True}, {"include_usage": True}),
        (
            {"include_usage": False, "continuous_usage_stats": True},
            {"include_usage": True, "continuous_usage_stats": True},
        ),
    ],
)
async def test_a_streamed_chat_request_reaches_the_upstream_as_sent(
    keel: tuple[FastAPI, httpx.AsyncClient],
    fake_openai: FakeOpenAI,
    stream_options: dict[str, Any] | None,
    upstream_stream_options: dict[str, Any],
) -> None:
    _, client = keel
    sent = {"model": "gpt", **CHAT_BODIES["integers stay integers"], "stream": True}
    sent["stream_options"] = stream_options  # an explicit null too
    response = await client.post("/v1/chat/completions", json=sent)
    assert response.status_code == 200
    assert response.text.endswith("data: [DONE]\n\n")
    expected = upstream_view(sent, stream_options=upstream_stream_options)
    assert canonical(fake_openai.last.body) == canonical(expected)


async def test_keels_own_cache_field_is_the_only_field_taken_out(
    keel: tuple[FastAPI, httpx.AsyncClient], fake_openai: FakeOpenAI
) -> None:
    _, client = keel
    sent = {"model": "gpt", "messages": [USER], "temperature": 0, "top_k": 3}
    response = await client.post("/v1/chat/completions", json={**sent, "cache": {"ttl": 60}})
    assert response.status_code == 200
    assert canonical(fake_openai.last.body) == canonical(upstream_view(sent))


COMPLETION_BODIES: dict[str, dict[str, Any]] = {
    "text": {"prompt": "Once upon a time", "max_tokens": 7, "temperature": 0},
    "texts": {"prompt": ["One", "Two"], "n": 1, "stop": "\n", "seed": 3},
    "token ids": {"prompt": [1, 2, 3], "echo": True, "logprobs": 0, "max_tokens": 0},
    "lists of token ids": {"prompt": [[1, 2], [3]], "best_of": 2, "logit_bias": {"50256": -100}},
    "the rest": {
        "prompt": "x",
        "suffix": "y",
        "user": "u",
        "presence_penalty": 1,
        "frequency_penalty": 0.5,
        "top_p": 1,
        "stream": False,
        "stream_options": None,
        "top_k": 5,
    },
}


@pytest.mark.parametrize("body", COMPLETION_BODIES.values(), ids=COMPLETION_BODIES.keys())
async def test_a_completion_request_reaches_the_upstream_as_sent(
    keel: tuple[FastAPI, httpx.AsyncClient], fake_openai: FakeOpenAI, body: dict[str, Any]
) -> None:
    _, client = keel
    sent = {"model": "gpt", **body}
    response = await client.post("/v1/completions", json=sent)
    assert response.status_code == 200, response.text
    assert canonical(fake_openai.last.body) == canonical(upstream_view(sent))


async def test_a_streamed_completion_of_token_ids_reaches_the_upstream_as_sent(
    keel: tuple[FastAPI, httpx.AsyncClient], fake_openai: FakeOpenAI
) -> None:
    _, client = keel
    sent = {"model": "gpt", "prompt": [[1, 2], [3]], "stream": True, "temperature": 1}
    response = await client.post("/v1/completions", json=sent)
    assert response.status_code == 200
    expected = upstream_view(sent, stream_options={"include_usage": True})
    assert canonical(fake_openai.last.body) == canonical(expected)


EMBEDDING_BODIES: dict[str, dict[str, Any]] = {
    "text": {"input": "hello"},
    "texts": {"input": ["hello", "world"], "encoding_format": "float", "dimensions": 256},
    "token ids": {"input": [15339, 1917], "user": "u"},
    "lists of token ids": {"input": [[15339], [1917, 0]], "user": None, "extra": {"k": 1}},
}


@pytest.mark.parametrize("body", EMBEDDING_BODIES.values(), ids=EMBEDDING_BODIES.keys())
async def test_an_embedding_request_reaches_the_upstream_as_sent(
    keel: tuple[FastAPI, httpx.AsyncClient], fake_openai: FakeOpenAI, body: dict[str, Any]
) -> None:
    _, client = keel
    sent = {"model": "gpt", **body}
    response = await client.post("/v1/embeddings", json=sent)
    assert response.status_code == 200, response.text
    assert canonical(fake_openai.last.body) == canonical(upstream_view(sent))


# --- through the openai SDK ---------------------------------------------------------------------


@pytest.fixture
async def sdks(
    keel: tuple[FastAPI, httpx.AsyncClient], fake_openai_url: str
) -> AsyncIterator[tuple[openai.AsyncOpenAI, openai.AsyncOpenAI]]:
    """An SDK client talking to Keel, and one talking straight to the fake upstream."""
    _, client = keel
    through_keel = openai.AsyncOpenAI(
        api_key="unused",
        base_url=str(client.base_url.join("/v1")),
        http_client=client,
        max_retries=0,
    )
    direct = openai.AsyncOpenAI(api_key="sk-direct", base_url=fake_openai_url, max_retries=0)
    yield through_keel, direct
    await direct.close()


async def both_ways(
    fake: FakeOpenAI, call: Any, sdks: tuple[openai.AsyncOpenAI, openai.AsyncOpenAI]
) -> tuple[Any, Any]:
    """`call(sdk, model)` through Keel and directly; the upstream must get the same body."""
    through_keel, direct = sdks
    via_keel = await call(through_keel, "gpt")
    received_via_keel = fake.last.body
    straight = await call(direct, UPSTREAM_MODEL)
    assert canonical(received_via_keel) == canonical(fake.last.body)
    return via_keel, straight


async def test_the_sdks_chat_completion_is_the_same_through_keel(
    fake_openai: FakeOpenAI, sdks: tuple[openai.AsyncOpenAI, openai.AsyncOpenAI]
) -> None:
    async def call(sdk: openai.AsyncOpenAI, model: str) -> Any:
        return await sdk.chat.completions.create(
            model=model,
            messages=CHAT_BODIES["tool-call history with null content and refusal"]["messages"],
            temperature=1,
            logit_bias={"50256": -100},
            stream_options={"include_usage": True},
            extra_body={"top_k": 40},
        )

    via_keel, straight = await both_ways(fake_openai, call, sdks)
    assert isinstance(via_keel, openai.types.chat.ChatCompletion)
    assert via_keel.model_dump(exclude={"created"}) == straight.model_dump(exclude={"created"})


@pytest.mark.parametrize("include_usage", [False, True])
async def test_the_sdks_chat_stream_is_the_same_through_keel(
    fake_openai: FakeOpenAI,
    sdks: tuple[openai.AsyncOpenAI, openai.AsyncOpenAI],
    include_usage: bool,
) -> None:
    async def call(sdk: openai.AsyncOpenAI, model: str) -> list[Any]:
        stream = await sdk.chat.completions.create(
            model=model,
            messages=[USER],
            stream=True,
            stream_options={"include_usage": include_usage},
        )
        return [chunk async for chunk in stream]

    through_keel, direct = sdks
    via_keel = await call(through_keel, "gpt")
    straight = await call(direct, UPSTREAM_MODEL)
    # Upstream, Keel always asks for usage; the client sees it only when it asked.
    assert [chunk.model_dump() for chunk in via_keel] == [chunk.model_dump() for chunk in straight]
    assert (via_keel[-1].usage is not None) is include_usage


async def test_the_sdks_completion_of_token_ids_is_the_same_through_keel(
    fake_openai: FakeOpenAI, sdks: tuple[openai.AsyncOpenAI, openai.AsyncOpenAI]
) -> None:
    async def call(sdk: openai.AsyncOpenAI, model: str) -> Any:
        return await sdk.completions.create(model=model, prompt=[[1, 2], [3]], max_tokens=5)

    via_keel, straight = await both_ways(fake_openai, call, sdks)
    assert isinstance(via_keel, openai.types.Completion)
    assert via_keel.model_dump() == straight.model_dump()


async def test_the_sdks_embeddings_are_the_same_through_keel(
    fake_openai: FakeOpenAI, sdks: tuple[openai.AsyncOpenAI, openai.AsyncOpenAI]
) -> None:
    async def call(sdk: openai.AsyncOpenAI, model: str) -> Any:
        return await sdk.embeddings.create(
            model=model, input=[[15339], [1917]], encoding_format="float"
        )

    via_keel, straight = await both_ways(fake_openai, call, sdks)
    assert isinstance(via_keel, openai.types.CreateEmbeddingResponse)
    assert via_keel.model_dump() == straight.model_dump()


# --- what Keel changes on the way is what is sent ------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "masked"),
    [
        (
            CHAT,
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "see TICKET-42"}]},
                    {
                        "role": "assistant",
                        "content": None,
                        "refusal": None,
                        "tool_calls": [
                            {
                                "id": "c1",
                                "type": "function",
                                "function": {"name": "f", "arguments": '{"t": "TICKET-7"}'},
                            },
                            {
                                "id": "c2",
                                "type": "custom",
                                "custom": {"name": "g", "input": "TICKET-8"},
                            },
                        ],
                    },
                    {"role": "tool", "tool_call_id": "c1", "content": "TICKET-9 open"},
                ],
                "temperature": 1,
            },
            [
                ("messages", 0, "content", 0, "text"),
                ("messages", 1, "tool_calls", 0, "function", "arguments"),
                ("messages", 1, "tool_calls", 1, "custom", "input"),
                ("messages", 2, "content"),
            ],
        ),
        (COMPLETIONS, {"prompt": ["TICKET-1", "fine"], "max_tokens": 3}, [("prompt", 0)]),
        (EMBEDDINGS, {"input": "TICKET-2"}, [("input",)]),
    ],
)
async def test_masked_text_is_what_reaches_the_upstream(
    keel_home: Path,
    fake_openai: FakeOpenAI,
    fake_openai_url: str,
    path: str,
    body: dict[str, Any],
    masked: list[tuple[str | int, ...]],
) -> None:
    rules = [{"name": "tickets", "kind": "regex", "patterns": [r"TICKET-\d+"], "action": "mask"}]
    deployment = {"id": "gpt", "provider": "openai", "model": UPSTREAM_MODEL}
    settings = remote_settings(
        keel_home,
        [{**deployment, "api_base": fake_openai_url, "api_key": "sk-test"}],
        guardrails={"rules": rules},
    )
    sent = {"model": "gpt", **body}
    async with running_app(settings) as (_app, client):
        response = await client.post(path, json=sent)
    assert response.status_code == 200, response.text
    received = fake_openai.last.body
    assert "TICKET-" not in json.dumps(received)
    expected = json.loads(json.dumps(upstream_view(sent)))
    for where in masked:
        owner = expected
        for key in where[:-1]:
            owner = owner[key]
        owner[where[-1]] = re.sub(r"TICKET-\d+", "<REDACTED>", owner[where[-1]])
    assert canonical(received) == canonical(expected)


async def test_token_id_prompts_are_estimated_for_quotas_and_forwarded(
    keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    """A quota reserves an estimate of the input before the call: for token ids, their count."""
    admin_key = "wire-fidelity-admin-key-0123456789abcdef"
    deployment = {"id": "gpt", "provider": "openai", "model": UPSTREAM_MODEL}
    settings = remote_settings(
        keel_home,
        [{**deployment, "api_base": fake_openai_url, "api_key": "sk-test"}],
        auth={"admin_key": admin_key},
    )
    admin = {"authorization": f"Bearer {admin_key}"}
    async with running_app(settings) as (_app, client):
        created = await client.post(
            "/v1/keel/teams",
            json={"name": "tight", "limits": {"tokens_per_day": 30}},
            headers=admin,
        )
        assert created.status_code == 201, created.text
        user = await client.post(
            "/v1/keel/users",
            json={"name": "dev", "role": "developer", "team": "tight"},
            headers=admin,
        )
        assert user.status_code == 201, user.text
        key = await client.post("/v1/keel/keys", json={"name": "k", "user": "dev"}, headers=admin)
        assert key.status_code == 201, key.text
        caller = {"authorization": f"Bearer {key.json()['secret']}"}
        sent = {"model": "gpt", "prompt": [[1, 2, 3], [4]], "max_tokens": 5}
        response = await client.post(COMPLETIONS, json=sent, headers=caller)
        assert response.status_code == 200, response.text
        assert canonical(fake_openai.last.body) == canonical(upstream_view(sent))
        # 3 tokens of the longest prompt plus 5 to generate would fit; 30 ids plus 5 would not.
        too_long = {**sent, "prompt": [list(range(30))]}
        refused = await client.post(COMPLETIONS, json=too_long, headers=caller)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "quota_exceeded"
