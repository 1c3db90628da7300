"""The bundled local models, for real: SmolLM2-135M-Instruct (llama.cpp) and all-MiniLM-L6-v2."""

from __future__ import annotations

import asyncio
import base64
import struct
import threading
import time
from collections.abc import Iterator
from itertools import pairwise
from typing import Any

import numpy as np
import pytest

from keel.config import DeploymentConfig
from keel.errors import (
    ContextWindowExceededError,
    InvalidRequestError,
    UnsupportedParameterError,
)
from keel.providers._worker import ModelWorker
from keel.providers.local_embeddings import SentenceTransformersProvider
from keel.providers.local_llama import LlamaCppProvider
from keel.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

CHAT_ID = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def llama() -> Iterator[LlamaCppProvider]:
    provider = LlamaCppProvider(
        DeploymentConfig(id=CHAT_ID, provider="llama_cpp", n_ctx=1024),
        http=None,  # type: ignore[arg-type]
    )
    yield provider
    provider._worker.shutdown()


@pytest.fixture(scope="module")
def minilm() -> Iterator[SentenceTransformersProvider]:
    provider = SentenceTransformersProvider(
        DeploymentConfig(id="all-minilm-l6-v2", provider="sentence_transformers", kind="embedding"),
        http=None,  # type: ignore[arg-type]
    )
    yield provider
    provider._worker.shutdown()


def chat(content: Any = "What is 2+2?", **params: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": CHAT_ID, "messages": [{"role": "user", "content": content}], **params}
    )


async def test_chat_completion(llama: LlamaCppProvider) -> None:
    response = await llama.chat(chat(max_tokens=12, temperature=0, seed=1))
    choice = response["choices"][0]
    assert response["model"] == CHAT_ID
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"]
    assert choice["finish_reason"] in {"stop", "length"}
    usage = response["usage"]
    assert usage["prompt_tokens"] > 5
    assert 0 < usage["completion_tokens"] <= 12


async def test_stream_ends_with_usage_that_counts_the_tokens(llama: LlamaCppProvider) -> None:
    chunks = [chunk async for chunk in llama.chat_stream(chat(max_tokens=10, temperature=0))]
    *content, final = chunks
    assert final["choices"] == [] and final["object"] == "chat.completion.chunk"
    tokens = [c for c in content if c["choices"][0]["delta"].get("content")]
    assert final["usage"]["completion_tokens"] == len(tokens) <= 10
    assert content[-1]["choices"][0]["finish_reason"] in {"stop", "length"}
    # The same prompt, not streamed, reports the prompt tokens the stream must match.
    plain = await llama.chat(chat(max_tokens=10, temperature=0))
    assert final["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]


async def test_closing_a_stream_stops_the_generation(llama: LlamaCppProvider) -> None:
    stream = llama.chat_stream(chat("Write a very long story about the sea.", max_tokens=900))
    received = 0
    async for chunk in stream:
        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            received += 1
        if received == 3:
            break
    await stream.aclose()  # type: ignore[attr-defined]
    await llama._worker.run(lambda: None)  # waits until the worker is free again
    assert llama._llama is not None
    prompt_tokens = len(llama._llama.tokenize(b"Write a very long story about the sea."))
    assert llama._llama.n_tokens < prompt_tokens + 60


async def test_concurrent_requests_are_all_served(llama: LlamaCppProvider) -> None:
    results = await asyncio.gather(
        *(llama.chat(chat(f"Say the number {n}", max_tokens=6, temperature=0)) for n in range(3))
    )
    assert all(r["choices"][0]["message"]["content"] for r in results)


async def test_worker_runs_one_job_at_a_time_in_arrival_order() -> None:
    worker = ModelWorker("test")
    spans: list[tuple[int, float, float, str]] = []

    def job(number: int) -> int:
        start = time.perf_counter()
        time.sleep(0.02)
        spans.append((number, start, time.perf_counter(), threading.current_thread().name))
        return number

    assert await asyncio.gather(*(worker.run(job, n) for n in range(5))) == list(range(5))
    worker.shutdown()
    assert [number for number, *_ in spans] == list(range(5))
    assert len({thread for *_, thread in spans}) == 1
    for (_, _, end, _), (_, next_start, _, _) in pairwise(spans):
        assert next_start >= end


async def test_prompt_over_the_context_window_is_a_400(llama: LlamaCppProvider) -> None:
    with pytest.raises(ContextWindowExceededError):
        await llama.chat(chat("word " * 1500, max_tokens=4))


async def test_text_only_model_refuses_images_and_tools(llama: LlamaCppProvider) -> None:
    image = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    with pytest.raises(InvalidRequestError, match="text only"):
        await llama.chat(chat(image))
    tools = [{"type": "function", "function": {"name": "f"}}]
    with pytest.raises(UnsupportedParameterError) as caught:
        llama.check_chat_request(chat(tools=tools))
    assert caught.value.param == "tools"


async def test_legacy_completion(llama: LlamaCppProvider) -> None:
    request = CompletionRequest(model=CHAT_ID, prompt=["The sky is", "Water is"], max_tokens=5)
    response = await llama.complete(request)
    assert response["object"] == "text_completion"
    assert [c["index"] for c in response["choices"]] == [0, 1]
    assert response["usage"]["completion_tokens"] > 0


async def test_embeddings_float_and_base64(minilm: SentenceTransformersProvider) -> None:
    texts = ["The cat sat on the mat.", "A cat is sitting on a mat.", "Stock prices fell."]
    floats = await minilm.embed(EmbeddingRequest(model="all-minilm-l6-v2", input=texts))
    vectors = np.array([item["embedding"] for item in floats["data"]])
    assert vectors.shape == (3, 384)
    assert floats["usage"]["prompt_tokens"] > 10
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert unit[0] @ unit[1] > unit[0] @ unit[2] + 0.3

    encoded = await minilm.embed(
        EmbeddingRequest(model="all-minilm-l6-v2", input=texts[0], encoding_format="base64")
    )
    raw = base64.b64decode(encoded["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert np.allclose(decoded, vectors[0], atol=1e-6)


async def test_embedding_input_that_cannot_be_served(minilm: SentenceTransformersProvider) -> None:
    with pytest.raises(UnsupportedParameterError):
        await minilm.embed(EmbeddingRequest(model="m", input="x", dimensions=10))
    with pytest.raises(InvalidRequestError, match="token ids"):
        await minilm.embed(EmbeddingRequest(model="m", input=[1, 2, 3]))
