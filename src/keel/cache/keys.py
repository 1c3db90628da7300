"""What a cached response is keyed on.

Exact key: sha256 over canonical JSON (sorted keys, no whitespace) of the model group, the
caller scope, the messages and every parameter that can change the output. Parameters that only
change how the answer travels or is attributed (`stream`, `stream_options`, `user`, `metadata`)
and the `cache` control field are left out, so a streamed and a non-streamed call share an entry.
Parameters Keel does not know are kept: they may change the output, and a key that is too
specific only costs a miss, while one that is too loose serves a wrong answer.

Semantic prompt: the last message, when it is a user message of plain text, is what gets
embedded; everything else (system prompt, earlier turns, parameters) is hashed into an exact
`context` that a semantic match must also equal. Embedding whole conversations instead would let
two chats with the same long system prompt match each other, and the bundled embedding model
truncates at 256 word pieces, which cuts off the question that matters most.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel

from keel.schemas import ChatCompletionRequest

__all__ = ["CONTROL_FIELD", "SemanticPrompt", "cache_key", "semantic_prompt", "take_cache_field"]

CONTROL_FIELD = "cache"
_NOT_IN_KEY = frozenset({"model", "messages", "stream", "stream_options", "user", "metadata"})
_EXCLUDED = _NOT_IN_KEY | {CONTROL_FIELD}
_DECIMAL_PARAMS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")


def _canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _output_params(request: ChatCompletionRequest) -> dict[str, Any]:
    # Only the top-level fields the client set, but each in full: nested defaults (a tool's
    # `type: function`) must read the same whether spelled out or not.
    params: dict[str, Any] = request.model_dump(
        include=request.model_fields_set - _EXCLUDED, exclude_none=True, by_alias=True
    )
    if params.get("n") == 1:
        # n=1 is the default everywhere; spelling it out must not split the entry.
        del params["n"]
    # Requests keep numbers as sent (`1` or `1.0`); for these decimals both ask the same thing.
    for name in _DECIMAL_PARAMS:
        if isinstance(params.get(name), int):
            params[name] = float(params[name])
    if isinstance(params.get("logit_bias"), dict):
        params["logit_bias"] = {token: float(bias) for token, bias in params["logit_bias"].items()}
    return params


def _messages(request: ChatCompletionRequest) -> list[dict[str, Any]]:
    dumped: list[dict[str, Any]] = request.model_dump(
        include={"messages"}, exclude_none=True, by_alias=True
    )["messages"]
    return dumped


def cache_key(model_group: str, request: ChatCompletionRequest, scope: str | None = None) -> str:
    """The exact-cache key: hex sha256 of the normalized request.

    `model_group` is the resolved group id (not the alias the client sent), so aliases of one
    group share entries. `scope` separates callers (an API key or tenant id); None is shared.
    """
    document = {
        "g": model_group,
        "s": scope or None,
        "m": _messages(request),
        "p": _output_params(request),
    }
    return hashlib.sha256(_canonical(document)).hexdigest()


@dataclass(frozen=True, slots=True)
class SemanticPrompt:
    text: str
    # 64 bits of sha256 over everything but the embedded text; a match must have the same value.
    context: int


def semantic_prompt(model_group: str, request: ChatCompletionRequest) -> SemanticPrompt | None:
    """The text to embed and the exact context around it, or None when the request is not
    eligible for semantic matching (last message not from the user, or not plain text)."""
    last = request.messages[-1]
    if last.role != "user":
        return None
    if isinstance(last.content, str):
        text = last.content
    elif last.content and all(getattr(part, "type", None) == "text" for part in last.content):
        text = last.text()
    else:
        # An image or a file cannot be judged by its caption; leave it to the exact cache.
        return None
    if not text.strip():
        return None
    messages = _messages(request)
    document = {
        "g": model_group,
        "m": messages[:-1],
        "r": {key: value for key, value in messages[-1].items() if key != "content"},
        "p": _output_params(request),
    }
    digest = hashlib.sha256(_canonical(document)).digest()
    return SemanticPrompt(text=text, context=int.from_bytes(digest[:8], "little", signed=True))


def take_cache_field(request: BaseModel) -> object:
    """Remove the `cache` control field from the request and return it (None when absent), so
    it is neither forwarded upstream nor refused as an unsupported parameter."""
    extra = request.model_extra
    if extra is None or CONTROL_FIELD not in extra:
        return None
    request.model_fields_set.discard(CONTROL_FIELD)
    return extra.pop(CONTROL_FIELD)
