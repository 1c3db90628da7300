"""Legacy `/v1/completions` over providers that only speak chat: a prompt becomes one user
message, and chat responses and chunks become `text_completion` ones."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from keel.errors import InvalidRequestError
from keel.schemas import ChatCompletionRequest, ChatMessage, CompletionRequest

__all__ = ["chat_request_for", "text_chunks", "text_completion_for"]

_SHARED_PARAMS = (
    "temperature",
    "top_p",
    "n",
    "stream",
    "stream_options",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "user",
    "logit_bias",
)


def chat_request_for(request: CompletionRequest) -> ChatCompletionRequest:
    prompts = request.prompts()
    if len(prompts) != 1:
        raise InvalidRequestError(
            f"model {request.model!r} takes one prompt per request", param="prompt"
        )
    carried = {"max_tokens", *_SHARED_PARAMS}
    # Unknown fields too: a chat request has nowhere to put them, and dropping them silently
    # would answer a different request than the one sent. Null, false and best_of 1 (one
    # candidate, what chat gives) ask for nothing.
    for param, value in request.model_dump(exclude_unset=True, exclude={"model", "prompt"}).items():
        asks_nothing = value is None or value is False or (param == "best_of" and value == 1)
        if param not in carried and not asks_nothing:
            raise InvalidRequestError(
                f"parameter {param!r} is not supported by model {request.model!r}",
                param=param,
                code="unsupported_parameter",
            )
    if request.max_tokens == 0:
        raise InvalidRequestError(
            f"max_tokens: model {request.model!r} answers through chat, which needs at least 1",
            param="max_tokens",
        )
    fields = request.model_dump(include=set(_SHARED_PARAMS), exclude_unset=True)
    if request.max_tokens is not None:
        fields["max_tokens"] = request.max_tokens
    return ChatCompletionRequest(
        model=request.model,
        messages=[ChatMessage(role="user", content=prompts[0])],
        **fields,
    )


def text_completion_for(chat: dict[str, Any]) -> dict[str, Any]:
    choices = [
        {
            "index": choice.get("index", 0),
            "text": (choice.get("message") or {}).get("content") or "",
            "logprobs": None,
            "finish_reason": choice.get("finish_reason"),
        }
        for choice in chat.get("choices", [])
    ]
    body = {
        "id": str(chat.get("id", "")).replace("chatcmpl", "cmpl", 1),
        "object": "text_completion",
        "created": chat.get("created"),
        "model": chat.get("model"),
        "choices": choices,
    }
    if "usage" in chat:
        body["usage"] = chat["usage"]
    return body


async def text_chunks(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    async for chunk in chunks:
        converted = {
            "id": str(chunk.get("id", "")).replace("chatcmpl", "cmpl", 1),
            "object": "text_completion",
            "created": chunk.get("created"),
            "model": chunk.get("model"),
            "choices": [
                {
                    "index": choice.get("index", 0),
                    "text": (choice.get("delta") or {}).get("content") or "",
                    "logprobs": None,
                    "finish_reason": choice.get("finish_reason"),
                }
                for choice in chunk.get("choices", [])
            ],
        }
        if "usage" in chunk:
            converted["usage"] = chunk["usage"]
        yield converted
