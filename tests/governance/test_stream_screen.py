"""Pseudonyms restored in a streamed answer: text, and tool-call arguments, chunk by chunk."""

from __future__ import annotations

import json
from typing import Any

import pytest

from keel.gateway.screening import StreamScreen
from keel.governance.guardrails import Guardrails, GuardrailsConfig, PiiConfig, Screening
from keel.schemas import ChatCompletionRequest

EMAIL = "alice@example.com"


@pytest.fixture(scope="module")
def guardrails() -> Guardrails:
    g = Guardrails(PiiConfig(outbound="pseudonymize"), GuardrailsConfig())
    g.load()
    return g


@pytest.fixture
async def screening(guardrails: Guardrails) -> Screening:
    request = ChatCompletionRequest.model_validate(
        {"model": "gpt-4o", "messages": [{"role": "user", "content": f"Write to {EMAIL}."}]}
    )
    found = await guardrails.screen_request(request, team=None, model="gpt-4o", external=True)
    assert request.messages[0].content == "Write to <EMAIL_ADDRESS_1>."
    return found


def chunk(*choices: dict[str, Any]) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": list(choices)}


def delta(index: int = 0, finish_reason: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"index": index, "delta": fields, "finish_reason": finish_reason}


def call(index: int, arguments: str, **fields: Any) -> dict[str, Any]:
    return {"index": index, **fields, "function": {"arguments": arguments}}


def relay(screen: StreamScreen, chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for each in chunks:
        screen.restore(each)
    tail = screen.finish()
    return chunks if tail is None else [*chunks, tail]


def contents(chunks: list[dict[str, Any]], index: int = 0) -> list[str]:
    return [
        choice["delta"].get("content") or ""
        for each in chunks
        for choice in each["choices"]
        if choice["index"] == index
    ]


def arguments(chunks: list[dict[str, Any]], choice_index: int = 0) -> dict[int, list[str]]:
    """Each tool call's argument fragments, as a client would receive them."""
    found: dict[int, list[str]] = {}
    for each in chunks:
        for choice in each["choices"]:
            if choice["index"] != choice_index:
                continue
            for tool_call in choice["delta"].get("tool_calls") or ():
                found.setdefault(tool_call["index"], []).append(tool_call["function"]["arguments"])
    return found


async def test_a_placeholder_split_across_content_chunks(
    guardrails: Guardrails, screening: Screening
) -> None:
    screen = StreamScreen(guardrails, screening)
    chunks = relay(
        screen,
        [
            chunk(delta(role="assistant", content="Mail <EMAIL_")),
            chunk(delta(content="ADDRESS_1> now, then <EMAIL")),
            chunk(delta(content="_ADDRESS_1>. Also <EM")),
            chunk(delta(finish_reason="stop")),
        ],
    )
    # Nothing that may be the start of a placeholder leaves before it is complete; what is
    # still held at the finish reason goes out with that chunk.
    assert contents(chunks) == ["Mail ", f"{EMAIL} now, then ", f"{EMAIL}. Also ", "<EM"]
    assert len(chunks) == 4
    assert "".join(screen.text[0]) == f"Mail {EMAIL} now, then {EMAIL}. Also <EM"
    await screen.check_output()


async def test_placeholders_split_across_tool_call_argument_chunks(
    guardrails: Guardrails, screening: Screening
) -> None:
    # A value that needs escaping in a JSON string, made for this request like the e-mail.
    quoted = screening.pseudonyms.placeholder("CUSTOM", 'say "hi"\\')
    assert quoted == "<CUSTOM_1>"
    screen = StreamScreen(guardrails, screening)
    start = {"type": "function"}
    chunks = relay(
        screen,
        [
            chunk(delta(role="assistant", content=None, tool_calls=[call(0, "", id="a", **start)])),
            chunk(delta(tool_calls=[call(0, '{"to": "<EMAIL_')])),
            chunk(delta(tool_calls=[call(1, '{"text": "<CUS', id="b", **start)])),
            chunk(delta(tool_calls=[call(0, 'ADDRESS_1>", "cc": "<EMAIL_ADDRESS_1')])),
            chunk(delta(tool_calls=[call(1, 'TOM_1>", "to": "<EMAIL_ADD')])),
            chunk(delta(tool_calls=[call(1, 'RESS_1>"}')])),
            chunk(delta(tool_calls=[call(0, '>"}')], finish_reason="tool_calls")),
        ],
    )
    assert len(chunks) == 7  # everything went out by the finish reason: no extra chunk
    sent = arguments(chunks)
    # Each call has its own restorer: call 1's text never completes call 0's held tail.
    assert sent[0] == ["", '{"to": "', f'{EMAIL}", "cc": "', f'{EMAIL}"}}']
    assert sent[1] == ['{"text": "', 'say \\"hi\\"\\\\", "to": "', f'{EMAIL}"}}']
    assert json.loads("".join(sent[0])) == {"to": EMAIL, "cc": EMAIL}
    assert json.loads("".join(sent[1])) == {"text": 'say "hi"\\', "to": EMAIL}
    assert chunks[0]["choices"][0]["delta"]["tool_calls"][0]["id"] == "a"
    # The output rules see the answer's text only, as before.
    assert screen.text == {}


async def test_held_arguments_go_out_with_the_finish_reason(
    guardrails: Guardrails, screening: Screening
) -> None:
    screen = StreamScreen(guardrails, screening)
    chunks = relay(
        screen,
        [
            chunk(delta(content="", tool_calls=[call(0, '{"to": "<EMAIL_ADDRESS_1>", "x": "<EM')])),
            chunk(delta(tool_calls=[call(1, '{"y": "<EMAIL_ADDRESS_1')])),
            chunk(delta(finish_reason="tool_calls")),
        ],
    )
    assert len(chunks) == 3
    finishing = chunks[-1]["choices"][0]
    assert finishing["finish_reason"] == "tool_calls"
    assert finishing["delta"]["tool_calls"] == [call(0, "<EM"), call(1, "<EMAIL_ADDRESS_1")]
    assert arguments(chunks)[0] == [f'{{"to": "{EMAIL}", "x": "', "<EM"]
    assert screen.argument_restorers == {} and screen.finish() is None


async def test_each_choice_restores_its_own_tool_calls(
    guardrails: Guardrails, screening: Screening
) -> None:
    screen = StreamScreen(guardrails, screening)
    chunks = relay(
        screen,
        [
            chunk(
                delta(0, tool_calls=[call(0, '"<EMAIL_')]),
                delta(1, tool_calls=[call(0, '"<EMAIL_ADDRESS')]),
            ),
            chunk(delta(1, tool_calls=[call(0, '_1>"')])),
            chunk(delta(0, tool_calls=[call(0, 'ADDRESS_1>"')], finish_reason="tool_calls")),
            chunk(delta(1, finish_reason="tool_calls")),
        ],
    )
    assert "".join(arguments(chunks, 0)[0]) == f'"{EMAIL}"'
    assert "".join(arguments(chunks, 1)[0]) == f'"{EMAIL}"'
    assert len(chunks) == 4


async def test_finish_emits_what_is_held_when_the_stream_ends_without_a_finish_reason(
    guardrails: Guardrails, screening: Screening
) -> None:
    screen = StreamScreen(guardrails, screening)
    first = chunk(delta(content="Hi <EMAIL_ADDRESS_1> and <EMAIL_ADDRESS_", tool_calls=[]))
    second = chunk(delta(tool_calls=[call(0, '{"to": "<EMAIL_ADDRESS_1')]))
    second["usage"] = {"prompt_tokens": 3}
    screen.restore(first)
    screen.restore(second)
    assert first["choices"][0]["delta"]["content"] == f"Hi {EMAIL} and "
    assert second["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] == '{"to": "'

    tail = screen.finish()
    assert tail is not None
    assert "usage" not in tail and tail["id"] == "chatcmpl-1"
    assert tail["choices"] == [
        {
            "index": 0,
            "delta": {"content": "<EMAIL_ADDRESS_", "tool_calls": [call(0, "<EMAIL_ADDRESS_1")]},
            "finish_reason": None,
        }
    ]
    assert "".join(screen.text[0]) == f"Hi {EMAIL} and <EMAIL_ADDRESS_"
    assert screen.finish() is None


async def test_completion_text_is_restored_across_chunks(
    guardrails: Guardrails, screening: Screening
) -> None:
    screen = StreamScreen(guardrails, screening)
    chunks = [
        {"object": "text_completion", "choices": [{"index": 0, "text": "to <EMAIL_ADD"}]},
        {"object": "text_completion", "choices": [{"index": 0, "text": "RESS_1> and <EMAIL"}]},
    ]
    for each in chunks:
        screen.restore(each)
    tail = screen.finish()
    assert [c["choices"][0]["text"] for c in chunks] == ["to ", f"{EMAIL} and "]
    assert tail is not None
    assert tail["choices"] == [{"index": 0, "text": "<EMAIL", "finish_reason": None}]


async def test_without_pseudonyms_chunks_pass_unchanged(guardrails: Guardrails) -> None:
    screen = StreamScreen(guardrails, Screening())
    original = chunk(delta(content="a <b", tool_calls=[call(0, '{"x": "<EMAIL_ADDRESS_1>"}')]))
    relayed = json.loads(json.dumps(original))
    screen.restore(relayed)
    assert relayed == original
    assert screen.finish() is None
