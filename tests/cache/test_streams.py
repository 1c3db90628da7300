"""A cached completion replayed as a stream, and a relayed stream assembled for storing."""

from __future__ import annotations

import copy
from typing import Any

from keel.cache import assemble, replay
from tests.cache.helpers import completion

TOOL_CALLS = [
    {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
    },
    {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
]


def test_replay_is_a_well_formed_stream() -> None:
    original = completion("The capital of France is Paris, on the Seine, since forever.")
    chunks = replay(original)
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert all(chunk["id"] == original["id"] for chunk in chunks)
    first, *middle, finish, usage = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    pieces = [chunk["choices"][0]["delta"]["content"] for chunk in middle]
    assert 2 <= len(pieces) <= 4
    assert "".join(pieces) == original["choices"][0]["message"]["content"]
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert usage["choices"] == [] and usage["usage"] == original["usage"]


def test_round_trip_text() -> None:
    original = completion("Paris is the capital of France. " * 10)
    assert assemble(replay(copy.deepcopy(original))) == original


def test_round_trip_tool_calls_and_n_2() -> None:
    original = completion("unused", "Checking the weather for you now.", tool_calls=TOOL_CALLS)
    chunks = replay(copy.deepcopy(original))
    opening = [
        call
        for chunk in chunks
        for choice in chunk["choices"]
        for call in choice["delta"].get("tool_calls", ())
        if "id" in call
    ]
    assert [call["function"]["name"] for call in opening] == ["get_weather", "get_time"]
    assembled = assemble(chunks)
    assert assembled == original
    assert assembled["choices"][0]["message"]["content"] is None
    assert assembled["choices"][0]["finish_reason"] == "tool_calls"
    assert assembled["choices"][1]["message"]["content"] == "Checking the weather for you now."


def test_round_trip_without_usage_with_refusal_and_logprobs() -> None:
    original = completion("", usage=False)
    choice = original["choices"][0]
    choice["message"] = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
    choice["logprobs"] = {"content": None, "refusal": [{"token": "I", "logprob": -0.1}]}
    chunks = replay(copy.deepcopy(original))
    assert all(chunk["choices"] for chunk in chunks)
    assert assemble(chunks) == original


def test_assemble_merges_interleaved_provider_deltas() -> None:
    head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": index, "delta": delta, "finish_reason": finish}
        return {**head, "choices": [choice]}

    call = {"index": 0, "id": "call_9", "type": "function"}
    chunks = [
        chunk(0, {"role": "assistant", "content": None}),
        chunk(1, {"role": "assistant", "content": ""}),
        chunk(0, {"tool_calls": [{**call, "function": {"name": "f", "arguments": ""}}]}),
        chunk(1, {"content": "Hel"}),
        chunk(0, {"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
        chunk(1, {"content": "lo"}),
        chunk(0, {"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]}),
        chunk(1, {}, "stop"),
        chunk(0, {}, "tool_calls"),
        {**head, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}},
    ]
    assembled = assemble(chunks)
    first, second = assembled["choices"]
    assert first["message"]["tool_calls"] == [
        {"id": "call_9", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    ]
    assert first["message"]["content"] is None
    assert first["finish_reason"] == "tool_calls"
    assert second["message"]["content"] == "Hello"
    assert assembled["usage"] == {"prompt_tokens": 3, "completion_tokens": 4}
    assert assembled["object"] == "chat.completion"


def test_a_stream_cut_short_assembles_to_an_unfinished_completion() -> None:
    chunks = replay(completion("Paris, of course, as every atlas will tell you."))[:-2]
    assert assemble(chunks)["choices"][0]["finish_reason"] is None
