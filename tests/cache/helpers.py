"""Helpers for the cache tests: a clock tests move by hand, a deterministic embedding
function, and builders for requests and completions."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from numpy.typing import NDArray

from keel.schemas import ChatCompletionRequest

# Read at import: the autouse keel_home fixture clears KEEL_* variables before each test.
from tests.conftest import REDIS_URL  # noqa: F401 - re-exported for the cache tests


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeEmbedder:
    """Unit vectors from a hash of the text (unrelated texts are close to orthogonal in 64
    dimensions), or the vector registered for a text with a chosen cosine to another."""

    def __init__(self, dimension: int = 64) -> None:
        self.dimension = dimension
        self.registered: dict[str, NDArray[np.float32]] = {}
        self.calls = 0

    def vector(self, text: str) -> NDArray[np.float32]:
        if text in self.registered:
            return self.registered[text]
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        vector = np.random.default_rng(seed).standard_normal(self.dimension).astype(np.float32)
        return vector / np.linalg.norm(vector)

    def near(self, text: str, base: str, cosine: float) -> None:
        """Make `text` embed at exactly `cosine` similarity to `base`."""
        anchor = self.vector(base)
        other = self.vector(text + "\0orthogonal")
        other = other - float(other @ anchor) * anchor
        other /= np.linalg.norm(other)
        mixed = cosine * anchor + np.sqrt(1 - cosine**2) * other
        self.registered[text] = mixed.astype(np.float32)

    async def __call__(self, texts: list[str]) -> NDArray[Any]:
        self.calls += 1
        return np.stack([self.vector(text) for text in texts])


def chat(content: str = "What is the capital of France?", **fields: Any) -> ChatCompletionRequest:
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a terse geography tutor."},
            {"role": "user", "content": content},
        ],
        **fields,
    }
    return ChatCompletionRequest.model_validate(body)


def completion(
    *texts: str, tool_calls: list[dict[str, Any]] | None = None, usage: bool = True
) -> dict[str, Any]:
    choices: list[dict[str, Any]] = []
    for index, text in enumerate(texts or ("Paris.",)):
        message: dict[str, Any] = {"role": "assistant", "content": text}
        finish = "stop"
        if tool_calls is not None and index == 0:
            message = {"role": "assistant", "content": None, "tool_calls": tool_calls}
            finish = "tool_calls"
        choices.append(
            {"index": index, "message": message, "finish_reason": finish, "logprobs": None}
        )
    body: dict[str, Any] = {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1_800_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_test",
        "choices": choices,
    }
    if usage:
        body["usage"] = {"prompt_tokens": 21, "completion_tokens": 3, "total_tokens": 24}
    return body
