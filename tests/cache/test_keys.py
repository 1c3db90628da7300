"""Exact keys and semantic prompts: what counts as the same request."""

from __future__ import annotations

from typing import Any

import pytest

from keel.cache import cache_key, take_cache_field
from keel.cache.keys import semantic_prompt
from keel.schemas import ChatCompletionRequest
from tests.cache.helpers import chat


def parsed(raw: str) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate_json(raw)


def test_parameter_order_and_whitespace_do_not_matter() -> None:
    one = parsed(
        '{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}],"seed":7,'
        '"tools":[{"type":"function","function":{"name":"f","parameters":{"a":1,"b":2}}}]}'
    )
    other = parsed(
        """{
            "seed": 7,
            "tools": [{"function": {"parameters": {"b": 2, "a": 1}, "name": "f"}}],
            "messages": [ {"content": "hi", "role": "user"} ],
            "model": "m",
            "temperature": 0.0
        }"""
    )
    assert cache_key("group", one) == cache_key("group", other)


@pytest.mark.parametrize(
    "transport",
    [
        {"stream": True},
        {"stream": True, "stream_options": {"include_usage": True}},
        {"user": "someone"},
        {"metadata": {"trace": "abc"}},
        {"cache": {"ttl": 60}},
        {"n": 1},
    ],
)
def test_fields_that_do_not_change_the_answer_are_left_out(transport: dict[str, Any]) -> None:
    assert cache_key("g", chat(temperature=0, **transport)) == cache_key("g", chat(temperature=0))


@pytest.mark.parametrize(
    "change",
    [
        {"temperature": 0.5},
        {"top_p": 0.9},
        {"max_tokens": 10},
        {"max_completion_tokens": 10},
        {"stop": ["\n"]},
        {"seed": 1},
        {"n": 2},
        {"presence_penalty": 0.5},
        {"frequency_penalty": 0.5},
        {"logit_bias": {"50256": -100}},
        {"logprobs": True},
        {"response_format": {"type": "json_object"}},
        {"tool_choice": "none"},
        {"tools": [{"type": "function", "function": {"name": "lookup"}}]},
        {"some_provider_knob": 3},
    ],
)
def test_parameters_that_change_the_answer_change_the_key(change: dict[str, Any]) -> None:
    changed = chat(**{"temperature": 0, **change})
    assert cache_key("g", changed) != cache_key("g", chat(temperature=0))


def test_messages_group_and_scope_separate_entries() -> None:
    request = chat(temperature=0)
    base = cache_key("g", request)
    assert cache_key("g", chat("What is the capital of Spain?", temperature=0)) != base
    assert cache_key("other-group", request) != base
    assert cache_key("g", request, scope="caller-a") != base
    assert cache_key("g", request, scope="caller-a") != cache_key("g", request, scope="caller-b")
    assert cache_key("g", request, scope="caller-a") == cache_key("g", request, scope="caller-a")
    assert len(base) == 64


def test_take_cache_field_removes_it_from_what_is_forwarded() -> None:
    request = chat(temperature=0, cache={"ttl": 5})
    assert take_cache_field(request) == {"ttl": 5}
    assert "cache" not in request.set_params()
    assert take_cache_field(request) is None


def test_semantic_prompt_embeds_the_last_user_message_and_hashes_the_rest() -> None:
    prompt = semantic_prompt("g", chat("Capital of France?", temperature=0))
    assert prompt is not None
    assert prompt.text == "Capital of France?"
    same_context = semantic_prompt("g", chat("France's capital?", temperature=0, stream=True))
    assert same_context is not None and same_context.context == prompt.context
    other_params = semantic_prompt("g", chat("Capital of France?", temperature=0, seed=3))
    assert other_params is not None and other_params.context != prompt.context
    other_system = chat("Capital of France?", temperature=0)
    other_system.messages[0].content = "You are a pirate."
    found = semantic_prompt("g", other_system)
    assert found is not None and found.context != prompt.context


def test_semantic_prompt_skips_what_cannot_be_judged_by_text() -> None:
    image = parsed(
        '{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"what is it"},'
        '{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}]}'
    )
    tool_last = parsed(
        '{"model":"m","messages":[{"role":"user","content":"x"},'
        '{"role":"tool","tool_call_id":"c1","content":"42"}]}'
    )
    parts = parsed(
        '{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi "},'
        '{"type":"text","text":"there"}]}]}'
    )
    assert semantic_prompt("g", image) is None
    assert semantic_prompt("g", tool_last) is None
    assert semantic_prompt("g", chat("   ")) is None
    found = semantic_prompt("g", parts)
    assert found is not None and found.text == "hi there"
