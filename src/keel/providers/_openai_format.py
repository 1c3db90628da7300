"""Builders for OpenAI-format response dicts, shared by the providers that translate into it."""

from __future__ import annotations

import time
import uuid
from typing import Any

__all__ = [
    "chat_chunk",
    "chat_completion",
    "new_completion_id",
    "usage",
    "usage_chunk",
]


def new_completion_id(prefix: str = "chatcmpl") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(
    prompt_tokens: int,
    completion_tokens: int,
    *,
    cached_tokens: int | None = None,
    reasoning_tokens: int | None = None,
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if cached_tokens is not None:
        result["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    if reasoning_tokens is not None:
        result["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    return result


def chat_completion(
    *,
    completion_id: str,
    model: str,
    choices: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    created: int | None = None,
) -> dict[str, Any]:
    """Each choice: {"index", "message": {"role", "content", ["tool_calls"]}, "finish_reason"}."""
    for choice in choices:
        choice.setdefault("logprobs", None)
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = usage
    return body


def chat_chunk(
    *,
    completion_id: str,
    model: str,
    delta: dict[str, Any],
    index: int = 0,
    finish_reason: str | None = None,
    created: int,
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [
            {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        ],
    }


def usage_chunk(
    *, completion_id: str, model: str, usage: dict[str, Any], created: int
) -> dict[str, Any]:
    """The last chunk of a stream when usage is reported: no choices, usage set."""
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage,
    }
