"""Where the text is in requests and answers, as slots that can be read and rewritten in place.

Requests are Keel's pydantic models (`keel.schemas`); answers are OpenAI-format dicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from keel.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    CustomToolCall,
    EmbeddingRequest,
    TextPart,
)

__all__ = ["Slot", "answer_slots", "request_slots", "tool_argument_slots"]


@dataclass(slots=True)
class Slot:
    """One string inside a request or an answer: an attribute of a model, a key of a dict or
    an index of a list."""

    owner: Any
    key: str | int

    def read(self) -> str:
        if isinstance(self.owner, BaseModel):
            return str(getattr(self.owner, str(self.key)))
        return str(self.owner[self.key])

    def write(self, text: str) -> None:
        if isinstance(self.owner, BaseModel):
            setattr(self.owner, str(self.key), text)
        else:
            self.owner[self.key] = text


def request_slots(request: Any) -> list[Slot]:
    """Every text a request sends to the model: message contents and text parts (every role),
    tool-call arguments, completion prompts, embedding inputs. Token-id inputs have none."""
    slots: list[Slot] = []
    if isinstance(request, ChatCompletionRequest):
        for message in request.messages:
            if isinstance(message.content, str):
                slots.append(Slot(message, "content"))
            elif message.content:
                slots.extend(Slot(p, "text") for p in message.content if isinstance(p, TextPart))
            for call in message.tool_calls or ():
                if isinstance(call, CustomToolCall):
                    slots.append(Slot(call.custom, "input"))
                elif call.function.arguments:
                    slots.append(Slot(call.function, "arguments"))
    elif isinstance(request, CompletionRequest):
        slots.extend(_strings(request, "prompt"))
    elif isinstance(request, EmbeddingRequest):
        slots.extend(_strings(request, "input"))
    else:
        raise TypeError(f"guardrails cannot screen a {type(request).__name__}")
    return slots


def _strings(owner: Any, name: str) -> list[Slot]:
    value = getattr(owner, name)
    if isinstance(value, str):
        return [Slot(owner, name)]
    return [Slot(value, index) for index, item in enumerate(value) if isinstance(item, str)]


def answer_slots(response: dict[str, Any]) -> list[Slot]:
    """The answer texts of a chat.completion (message.content) or text_completion (text)."""
    slots: list[Slot] = []
    for choice in response.get("choices") or ():
        message = choice.get("message")
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            slots.append(Slot(message, "content"))
        elif isinstance(choice.get("text"), str):
            slots.append(Slot(choice, "text"))
    return slots


def tool_argument_slots(response: dict[str, Any]) -> list[Slot]:
    """The JSON argument strings of the tool calls in a chat.completion."""
    slots: list[Slot] = []
    for choice in response.get("choices") or ():
        message = choice.get("message")
        for call in (message or {}).get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                slots.append(Slot(function, "arguments"))
    return slots
