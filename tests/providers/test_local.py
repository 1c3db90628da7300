"""The bundled local models, for real: SmolLM2-135M-Instruct (llama.cpp) and all-MiniLM-L6-v2."""

from __future__ import annotations

import asyncio
import base64
import json
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
from keel.providers._llama_messages import template_messages
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


async def test_streamed_usage_matches_the_unstreamed_one(llama: LlamaCppProvider) -> None:
    # Stop sequences and characters spread over several tokens are where counting shown text
    # would go wrong.
    requests = [
        chat("Count from 1 to 10.", max_tokens=12, temperature=0, stop=["3"]),
        chat("Reply with only emojis, no words: 😀😃😄😁😆", max_tokens=6, temperature=0),
    ]
    for request in requests:
        plain = await llama.chat(request)
        streamed = request.model_copy(update={"stream": True})
        *_, final = [chunk async for chunk in llama.chat_stream(streamed)]
        assert final["usage"] == plain["usage"]


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


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]

# What the OpenAI SDK sends back after a tool call: an assistant turn with null content.
TOOL_HISTORY: list[dict[str, Any]] = [
    {"role": "developer", "content": "Answer in one word."},
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    {"role": "assistant", "function_call": {"name": "get_time", "arguments": "{}"}},
    {"role": "function", "name": "get_time", "content": "noon"},
    {
        "role": "user",
        "content": [{"type": "text", "text": "So, "}, {"type": "text", "text": "how?"}],
    },
]


def test_history_reaches_the_template_as_role_and_text() -> None:
    request = ChatCompletionRequest.model_validate({"model": CHAT_ID, "messages": TOOL_HISTORY})
    assert template_messages(request.messages, CHAT_ID) == [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'
            "\n</tool_call>",
        },
        {"role": "user", "content": "<tool_response>\nsunny\n</tool_response>"},
        {
            "role": "assistant",
            "content": '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>',
        },
        # A tool result and the next user turn merge: some templates insist on alternation.
        {"role": "user", "content": "<tool_response>\nnoon\n</tool_response>\n\nSo, how?"},
    ]


async def test_tool_call_history_with_null_content_is_answered(llama: LlamaCppProvider) -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": CHAT_ID,
            "messages": TOOL_HISTORY,
            "tools": TOOLS,
            "tool_choice": "none",
            "n": 1,
            "max_tokens": 4,
            "temperature": 0,
        }
    )
    llama.check_chat_request(request)
    response = await llama.chat(request)
    assert response["choices"][0]["finish_reason"] in {"stop", "length"}
    assert response["usage"]["prompt_tokens"] > 40


async def test_text_only_model_refuses_images_and_tool_calls(llama: LlamaCppProvider) -> None:
    image = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    with pytest.raises(InvalidRequestError, match="text only") as refused:
        llama.check_chat_request(chat(image))
    assert refused.value.param == "messages"
    with pytest.raises(InvalidRequestError, match="text only"):
        await llama.chat(chat(image))
    refusals = {
        "tools": chat(tools=TOOLS),
        "tools ": chat(tools=TOOLS, tool_choice="auto"),
        "tool_choice": chat(tool_choice="required"),
        "tool_choice ": chat(
            tools=TOOLS, tool_choice={"type": "function", "function": {"name": "f"}}
        ),
        "functions": chat(functions=[{"name": "f"}]),
        "function_call": chat(function_call={"name": "f"}),
    }
    for param, request in refusals.items():
        with pytest.raises(UnsupportedParameterError) as caught:
            llama.check_chat_request(request)
        assert caught.value.param == param.strip()
    # Definitions the model is told not to use, or a choice that asks for nothing, are fine.
    llama.check_chat_request(chat(tools=TOOLS, tool_choice="none", parallel_tool_calls=False))
    llama.check_chat_request(chat(tool_choice="auto"))
    llama.check_chat_request(chat(functions=[{"name": "f"}], function_call="none"))


async def test_several_choices_share_one_prompt(llama: LlamaCppProvider) -> None:
    single = await llama.chat(chat(max_tokens=4, temperature=0))
    several = await llama.chat(chat(max_tokens=4, n=3, temperature=1.5, seed=7))
    choices = several["choices"]
    assert [choice["index"] for choice in choices] == [0, 1, 2]
    assert all(choice["message"]["content"] for choice in choices)
    usage = several["usage"]
    assert usage["prompt_tokens"] == single["usage"]["prompt_tokens"]
    assert 3 <= usage["completion_tokens"] <= 12
    # A seed makes the whole set reproducible.
    again = await llama.chat(chat(max_tokens=4, n=3, temperature=1.5, seed=7))
    assert [c["message"] for c in again["choices"]] == [c["message"] for c in choices]


async def test_several_choices_stream_one_after_the_other(llama: LlamaCppProvider) -> None:
    request = chat(max_tokens=4, n=2, temperature=0, stream=True)
    chunks = [chunk async for chunk in llama.chat_stream(request)]
    *content, final = chunks
    assert len({chunk["id"] for chunk in chunks}) == 1
    indexes = [chunk["choices"][0]["index"] for chunk in content]
    assert indexes == sorted(indexes) and set(indexes) == {0, 1}
    finishes = [c["choices"][0]["index"] for c in content if c["choices"][0]["finish_reason"]]
    assert finishes == [0, 1]
    tokens = [c for c in content if c["choices"][0]["delta"].get("content")]
    assert final["usage"]["completion_tokens"] == len(tokens) <= 8
    plain = await llama.chat(chat(max_tokens=4, temperature=0))
    assert final["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]


def check_token_logprobs(content: list[dict[str, Any]], top: int) -> None:
    for item in content:
        assert item["logprob"] <= 0
        assert item["bytes"] == list(item["token"].encode())
        alternatives = item["top_logprobs"]
        assert len(alternatives) == top
        assert [a["logprob"] for a in alternatives] == sorted(
            (a["logprob"] for a in alternatives), reverse=True
        )
        for alternative in alternatives:
            assert alternative["bytes"] == list(alternative["token"].encode())
        if top:
            # Greedy decoding picks the likeliest token.
            assert alternatives[0]["token"] == item["token"]
            assert alternatives[0]["logprob"] == pytest.approx(item["logprob"])


async def test_chat_logprobs_in_openai_shape(llama: LlamaCppProvider) -> None:
    response = await llama.chat(chat(max_tokens=4, temperature=0, logprobs=True, top_logprobs=3))
    choice = response["choices"][0]
    content = choice["logprobs"]["content"]
    assert len(content) == response["usage"]["completion_tokens"]
    assert "".join(item["token"] for item in content) == choice["message"]["content"]
    check_token_logprobs(content, 3)
    json.dumps(response)  # plain JSON types only

    bare = await llama.chat(chat(max_tokens=4, temperature=0, logprobs=True))
    check_token_logprobs(bare["choices"][0]["logprobs"]["content"], 0)
    plain = await llama.chat(chat(max_tokens=4, temperature=0))
    assert plain["choices"][0]["logprobs"] is None
    with pytest.raises(InvalidRequestError) as refused:
        llama.check_chat_request(chat(top_logprobs=2))
    assert refused.value.param == "top_logprobs"


async def test_logprobs_of_tokens_that_split_a_character(llama: LlamaCppProvider) -> None:
    # SmolLM2 spells each emoji in several byte-level tokens, none of them valid UTF-8 alone.
    params: dict[str, Any] = {"max_tokens": 6, "temperature": 0, "logprobs": True}
    prompt = "Reply with only emojis, no words: 😀😃😄😁😆"
    response = await llama.chat(chat(prompt, **params))
    text = response["choices"][0]["message"]["content"]
    content = response["choices"][0]["logprobs"]["content"]
    assert any(ord(character) > 0xFFFF for character in text)
    assert bytes(b for item in content for b in item["bytes"]).decode() == text
    assert any(item["token"].startswith("\\x") for item in content)  # a partial character

    streamed, entries = "", []
    async for chunk in llama.chat_stream(chat(prompt, stream=True, **params)):
        for choice in chunk["choices"]:
            streamed += choice["delta"].get("content") or ""
            entries.extend((choice["logprobs"] or {}).get("content") or ())
    assert streamed == text
    assert entries == content


async def test_streamed_logprobs_come_with_their_tokens(llama: LlamaCppProvider) -> None:
    request = chat(max_tokens=4, temperature=0, logprobs=True, top_logprobs=2, stream=True)
    chunks = [chunk async for chunk in llama.chat_stream(request)]
    *content, final = chunks
    text, logprobs = "", []
    for chunk in content:
        choice = chunk["choices"][0]
        text += choice["delta"].get("content") or ""
        if choice["logprobs"] is not None:
            logprobs.extend(choice["logprobs"]["content"])
    assert "".join(item["token"] for item in logprobs) == text
    assert final["usage"]["completion_tokens"] == len(logprobs) <= 4
    check_token_logprobs(logprobs, 2)
    json.dumps(chunks)


async def test_legacy_completion(llama: LlamaCppProvider) -> None:
    request = CompletionRequest(model=CHAT_ID, prompt=["The sky is", "Water is"], max_tokens=5)
    response = await llama.complete(request)
    assert response["object"] == "text_completion"
    assert [c["index"] for c in response["choices"]] == [0, 1]
    assert response["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize("stream", [False, True])
async def test_legacy_completion_of_zero_tokens_is_refused_not_run_to_the_context_end(
    llama: LlamaCppProvider, stream: bool
) -> None:
    request = CompletionRequest(model=CHAT_ID, prompt="The sky is", max_tokens=0)
    with pytest.raises(UnsupportedParameterError) as raised:
        if stream:
            async for _ in llama.complete_stream(request):
                pass
        else:
            await llama.complete(request)
    assert raised.value.param == "max_tokens"


async def test_legacy_completion_choices_and_logprobs(llama: LlamaCppProvider) -> None:
    request = CompletionRequest(
        model=CHAT_ID, prompt=["The sky is", "Water is"], max_tokens=3, n=2, logprobs=2
    )
    response = await llama.complete(request)
    choices = response["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    for choice, prompt in zip(choices, ["The sky is"] * 2 + ["Water is"] * 2, strict=True):
        logprobs = choice["logprobs"]
        tokens = logprobs["tokens"]
        assert len(tokens) == len(logprobs["token_logprobs"]) <= 3
        assert "".join(tokens) == choice["text"]
        # Offsets count characters from the start of the prompt.
        assert logprobs["text_offset"] == [
            len(prompt) + len("".join(tokens[:i])) for i in range(len(tokens))
        ]
        # OpenAI's legacy shape: the `logprobs` likeliest tokens, plus the sampled one.
        for token, top in zip(logprobs["tokens"], logprobs["top_logprobs"], strict=True):
            assert token in top and 2 <= len(top) <= 3
    json.dumps(response)  # plain JSON types only
    # Log-probabilities cover generated tokens only: an echoed prompt has none to give.
    with pytest.raises(UnsupportedParameterError) as refused:
        await llama.complete(
            CompletionRequest(model=CHAT_ID, prompt="The sky", max_tokens=2, echo=True, logprobs=1)
        )
    assert refused.value.param == "echo"
    streamed = [
        chunk
        async for chunk in llama.complete_stream(
            CompletionRequest(
                model=CHAT_ID, prompt="Water is", max_tokens=3, logprobs=1, stream=True
            )
        )
    ]
    tokens = [
        t for c in streamed for ch in c["choices"] for t in (ch["logprobs"] or {}).get("tokens", [])
    ]
    assert "".join(tokens) == "".join(ch["text"] for c in streamed for ch in c["choices"])
    assert streamed[-1]["usage"]["completion_tokens"] == len(tokens)
    # Each prompt counts once, however many choices it has.
    each = await llama.complete(
        CompletionRequest(model=CHAT_ID, prompt=request.prompt, max_tokens=1)
    )
    assert response["usage"]["prompt_tokens"] == each["usage"]["prompt_tokens"]
    assert response["usage"]["completion_tokens"] == sum(
        len(c["logprobs"]["tokens"]) for c in choices
    )


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
