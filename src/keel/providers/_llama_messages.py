"""An OpenAI chat history in the shape a GGUF chat template can take: role and text, nothing else.

Chat templates shipped inside GGUF files are written for plain text turns: many concatenate
`message['content']` (a null content makes them raise) and know nothing of tool calls or of the
`tool`, `function` and `developer` roles. So Keel renders every valid OpenAI history into
`{"role", "content"}` turns of `system`, `user` and `assistant` with string content:

- `developer` becomes `system`; null or absent content becomes ""; text parts (and an
  assistant's refusal parts) are joined;
- an assistant's `tool_calls` (and legacy `function_call`) are written after its text as
  `<tool_call>{"name": ..., "arguments": ...}</tool_call>`;
- `tool` and legacy `function` results become user turns `<tool_response>...</tool_response>`
  (the convention of the open models trained on tool use);
- consecutive turns of one role are merged, for templates that insist on alternation.

What a text-only model really cannot take (images, audio, files; a request that needs it to call
a tool) is refused here, before any generation.
"""

from __future__ import annotations

import json
from typing import Any

from keel.errors import InvalidRequestError, UnsupportedParameterError
from keel.schemas import (
    ChatCompletionRequest,
    ChatMessage,
    FunctionCall,
    RefusalPart,
    TextPart,
    ToolCall,
)

__all__ = ["check_no_tool_use", "template_messages"]

_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "user",
    "function": "user",
}


def template_messages(messages: list[ChatMessage], model_id: str) -> list[dict[str, str]]:
    """The history as `{"role", "content"}` turns; a non-text content part is a 400."""
    turns: list[dict[str, str]] = []
    for message in messages:
        role = _ROLES[message.role]
        text = _text(message, model_id)
        if message.role == "assistant":
            calls = [_tool_call_text(call) for call in message.tool_calls or ()]
            if message.function_call is not None:
                calls.append(_function_call_text(message.function_call))
            text = "\n".join(part for part in (text, *calls) if part)
        elif message.role in ("tool", "function"):
            text = f"<tool_response>\n{text}\n</tool_response>"
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] = "\n\n".join(p for p in (turns[-1]["content"], text) if p)
        else:
            turns.append({"role": role, "content": text})
    return turns


def check_no_tool_use(request: ChatCompletionRequest, provider: str, model_id: str) -> None:
    """Tool definitions are fine as long as the request doesn't ask the model to call them.

    `tool_choice: "none"` (or legacy `function_call: "none"`) means "answer in text": the
    definitions are then dropped. `"auto"` with no tools asks for nothing either. Anything that
    needs a tool call is refused by name, since the model has no tool-calling format.
    """
    extras = request.model_extra or {}
    choice: Any
    if request.tool_choice is not None:
        choice_param, choice = "tool_choice", request.tool_choice
    else:
        choice_param, choice = "function_call", extras.get("function_call")
    if choice is not None and choice not in ("none", "auto"):
        raise UnsupportedParameterError(
            f"{choice_param} {choice!r} is not supported by provider {provider!r} (model "
            f'{model_id!r}): the model cannot call tools; only "none" and "auto" are accepted',
            param=choice_param,
        )
    for param, definitions in (("tools", request.tools), ("functions", extras.get("functions"))):
        if definitions and choice != "none":
            raise UnsupportedParameterError(
                f"parameter {param!r} is not supported by provider {provider!r} (model "
                f'{model_id!r}): the model cannot call tools; send {choice_param} "none" to '
                "keep the definitions in the request unused",
                param=param,
            )


def _text(message: ChatMessage, model_id: str) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for part in content:
        if isinstance(part, TextPart):
            texts.append(part.text)
        elif isinstance(part, RefusalPart):
            texts.append(part.refusal)
        else:
            raise InvalidRequestError(
                f"model {model_id!r} accepts text only: a {part.type!r} content part cannot be "
                "sent to it",
                param="messages",
            )
    return "".join(texts)


def _tool_call_text(call: Any) -> str:
    if isinstance(call, ToolCall):
        return _function_call_text(call.function)
    # A custom tool's call (text-only history to this model): its free-form input stands for
    # the arguments.
    return _call_text(call.custom.name, call.custom.input)


def _function_call_text(call: FunctionCall) -> str:
    arguments: Any
    try:
        arguments = json.loads(call.arguments) if call.arguments else {}
    except ValueError:
        arguments = call.arguments  # kept as the client sent it
    return _call_text(call.name, arguments)


def _call_text(name: str, arguments: Any) -> str:
    payload = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"<tool_call>\n{payload}\n</tool_call>"
