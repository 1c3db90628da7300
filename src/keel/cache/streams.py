"""Between the two shapes of one answer: a `chat.completion` and its `chat.completion.chunk`s.

`replay` serves a cached completion to a streaming client; `assemble` turns a relayed stream back
into the completion to store. `assemble(replay(c))` equals `c` up to `refusal: null` keys, which
a stream cannot tell apart from absent ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["assemble", "replay"]

# A few pieces per answer: enough that clients exercise their incremental path, few enough that
# a cache hit is not paced like generation.
_PIECES = 4
_MIN_PIECE_CHARS = 16


def _pieces(text: str) -> list[str]:
    size = max(_MIN_PIECE_CHARS, -(-len(text) // _PIECES))
    return [text[start : start + size] for start in range(0, len(text), size)]


def replay(completion: dict[str, Any]) -> list[dict[str, Any]]:
    """The chunks of a stream that delivers `completion`: per choice a role chunk, the content
    in a few pieces, each tool call (name, then arguments), a finish chunk; then a usage chunk
    with no choices when the completion has usage."""
    head: dict[str, Any] = {
        "id": completion.get("id"),
        "object": "chat.completion.chunk",
        "created": completion.get("created"),
        "model": completion.get("model"),
    }
    for optional in ("system_fingerprint", "service_tier"):
        if completion.get(optional) is not None:
            head[optional] = completion[optional]

    def chunk(index: int, delta: dict[str, Any], **extra: Any) -> dict[str, Any]:
        choice = {"index": index, "delta": delta, "finish_reason": None, "logprobs": None}
        choice.update(extra)
        return {**head, "choices": [choice]}

    chunks: list[dict[str, Any]] = []
    for choice in completion.get("choices") or ():
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        content = message.get("content")
        role_delta = {"role": message.get("role", "assistant"), "content": None}
        if content is not None:
            role_delta["content"] = ""
        chunks.append(chunk(index, role_delta))
        body: list[dict[str, Any]] = [{"content": piece} for piece in _pieces(content or "")]
        if message.get("refusal") is not None:
            body.extend({"refusal": piece} for piece in _pieces(message["refusal"]))
        for position, call in enumerate(message.get("tool_calls") or ()):
            function = call.get("function") or {}
            opening = {
                "index": position,
                "id": call.get("id"),
                "type": call.get("type", "function"),
                "function": {"name": function.get("name"), "arguments": ""},
            }
            body.append({"tool_calls": [opening]})
            arguments = function.get("arguments") or ""
            body.extend(
                {"tool_calls": [{"index": position, "function": {"arguments": piece}}]}
                for piece in _pieces(arguments)
            )
        if message.get("function_call") is not None:
            body.append({"function_call": message["function_call"]})
        chunks.extend(chunk(index, delta) for delta in body)
        # Logprobs travel whole on the finish chunk; assemble concatenates them back.
        chunks.append(
            chunk(
                index,
                {},
                finish_reason=choice.get("finish_reason"),
                logprobs=choice.get("logprobs"),
            )
        )
    if completion.get("usage") is not None:
        chunks.append({**head, "choices": [], "usage": completion["usage"]})
    return chunks


@dataclass
class _Choice:
    role: str | None = None
    content: list[str] | None = None
    refusal: list[str] | None = None
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    function_call: dict[str, str] | None = None
    finish_reason: str | None = None
    logprobs: dict[str, list[Any] | None] | None = None

    def add(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta") or {}
        if delta.get("role"):
            self.role = delta["role"]
        if isinstance(delta.get("content"), str):
            self.content = [*(self.content or ()), delta["content"]]
        if isinstance(delta.get("refusal"), str):
            self.refusal = [*(self.refusal or ()), delta["refusal"]]
        for call in delta.get("tool_calls") or ():
            self._merge_tool_call(call)
        if delta.get("function_call"):
            merged = self.function_call or {"name": "", "arguments": ""}
            merged["name"] = merged["name"] or delta["function_call"].get("name") or ""
            merged["arguments"] += delta["function_call"].get("arguments") or ""
            self.function_call = merged
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        if choice.get("logprobs"):
            self.logprobs = self.logprobs or {}
            for kind, items in choice["logprobs"].items():
                known = self.logprobs.get(kind)
                self.logprobs[kind] = items if known is None else [*known, *(items or ())]

    def _merge_tool_call(self, call: dict[str, Any]) -> None:
        merged = self.tool_calls.setdefault(
            call.get("index", len(self.tool_calls)),
            {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
        )
        if call.get("id"):
            merged["id"] = call["id"]
        if call.get("type"):
            merged["type"] = call["type"]
        function = call.get("function") or {}
        if function.get("name") and not merged["function"]["name"]:
            merged["function"]["name"] = function["name"]
        merged["function"]["arguments"] += function.get("arguments") or ""

    def result(self, index: int) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": self.role or "assistant",
            "content": None if self.content is None else "".join(self.content),
        }
        if self.refusal is not None:
            message["refusal"] = "".join(self.refusal)
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[key] for key in sorted(self.tool_calls)]
        if self.function_call is not None:
            message["function_call"] = self.function_call
        return {
            "index": index,
            "message": message,
            "finish_reason": self.finish_reason,
            "logprobs": self.logprobs,
        }


def assemble(chunks: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The `chat.completion` a relayed stream amounts to: per choice index the content and
    refusal concatenated, tool-call deltas merged by their index, the last finish_reason; usage
    from the usage chunk. A stream cut short yields choices with finish_reason None, which
    `ResponseCache.set` refuses to store."""
    head: dict[str, Any] | None = None
    choices: dict[int, _Choice] = {}
    usage: dict[str, Any] | None = None
    for chunk in chunks:
        if head is None:
            head = chunk
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            choices.setdefault(choice.get("index", 0), _Choice()).add(choice)
    head = head or {}
    completion: dict[str, Any] = {
        "id": head.get("id"),
        "object": "chat.completion",
        "created": head.get("created"),
        "model": head.get("model"),
        "choices": [choices[index].result(index) for index in sorted(choices)],
    }
    for optional in ("system_fingerprint", "service_tier"):
        if head.get(optional) is not None:
            completion[optional] = head[optional]
    if usage is not None:
        completion["usage"] = usage
    return completion
