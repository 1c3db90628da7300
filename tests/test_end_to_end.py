"""The real `keel serve` process with its embedded defaults, driven by the official openai SDK,
the Keel SDK and the CLI."""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from keel import __version__
from keel.sdk import Keel, KeelAPIError
from tests.fakes.server import free_port, wait_ready

CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, Path, subprocess.Popen[str]]]:
    home = tmp_path_factory.mktemp("keel-e2e")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    env["KEEL_HOME"] = str(home)
    process = subprocess.Popen(
        [sys.executable, "-m", "keel", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, process, timeout_s=120)
    try:
        yield url, home, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def client(server: tuple[str, Path, subprocess.Popen[str]]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key="unused-locally")


def test_models(client: openai.OpenAI) -> None:
    ids = {model.id for model in client.models.list()}
    assert {CHAT, EMBED} <= ids
    assert client.models.retrieve(CHAT).owned_by == "llama_cpp"


def test_chat_with_the_openai_sdk(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=CHAT,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        max_tokens=20,
        temperature=0,
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert raw.headers["x-keel-request-id"].startswith("req_")
    assert raw.headers["x-keel-cost-usd"] == "0.00000000"


def test_streaming_with_the_openai_sdk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "Count from one to five."}],
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


def test_embeddings_and_completions_with_the_openai_sdk(client: openai.OpenAI) -> None:
    floats = client.embeddings.create(model=EMBED, input=["hello", "world"])
    assert [len(item.embedding) for item in floats.data] == [384, 384]
    encoded = client.embeddings.with_raw_response.create(
        model=EMBED, input="hello", encoding_format="base64"
    )
    assert len(base64.b64decode(encoded.http_response.json()["data"][0]["embedding"])) == 384 * 4
    completion = client.completions.create(model=CHAT, prompt="Once upon a time", max_tokens=8)
    assert completion.choices[0].text


def test_errors_are_openai_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": "x"}], temperature=7
        )
    assert "temperature" in str(bad.value)


def test_keel_sdk_and_cli(server: tuple[str, Path, subprocess.Popen[str]]) -> None:
    url, _, _ = server
    with Keel(url) as keel:
        assert keel.health() == {"status": "ok", "version": __version__}
        answer = keel.chat(CHAT, "Say yes.", max_tokens=5)
        assert answer["choices"][0]["message"]["content"]
        assert any(chunk["choices"] for chunk in keel.chat_stream(CHAT, "Hi", max_tokens=3))
        with pytest.raises(KeelAPIError) as caught:
            keel.chat("nope", "x")
        assert caught.value.status_code == 404 and caught.value.param == "model"

    env = {**os.environ, "KEEL_URL": url}
    cli = [sys.executable, "-m", "keel"]
    listed = subprocess.run([*cli, "models"], env=env, capture_output=True, text=True, check=True)
    assert CHAT in listed.stdout
    said = subprocess.run(
        [*cli, "chat", "Say hello", "--max-tokens", "6", "--stream"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert said.stdout.strip()
    deployments = subprocess.run(
        [*cli, "deployments", "--json"], env=env, capture_output=True, text=True, check=True
    )
    states = {row["id"]: row["state"] for row in json.loads(deployments.stdout)}
    assert states[CHAT] == "closed"
    cached = [
        subprocess.run(
            [*cli, "chat", "Name a fruit.", "--temperature", "0", "--max-tokens", "5"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for _ in range(2)
    ]
    assert cached[0] == cached[1]
    deadline = time.monotonic() + 10
    with Keel(url) as keel:  # records are written in batches, a moment after the answer
        while not (hits := [r for r in keel.requests(limit=20) if r["cache"] == "hit"]):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert hits[0]["cost_usd"] == 0
    failed = subprocess.run(
        [*cli, "chat", "x", "-m", "nope"], env=env, capture_output=True, text=True
    )
    assert failed.returncode == 1 and "does not exist" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_client_disconnect_stops_the_generation(
    server: tuple[str, Path, subprocess.Popen[str]],
) -> None:
    url, _, _ = server
    body = {
        "model": CHAT,
        "messages": [{"role": "user", "content": "Write a very long story about the sea."}],
        "max_tokens": 1500,
        "stream": True,
    }
    with httpx.Client(base_url=url, timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            request_id = response.headers["x-keel-request-id"]
            lines = response.iter_lines()
            for _ in range(6):
                next(lines)
        # The model is free again long before 1,500 tokens could have been generated...
        quick = http.post(
            "/v1/chat/completions",
            json={"model": CHAT, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3},
        )
        assert quick.status_code == 200
        # ...and the abandoned call is recorded as such, with the tokens actually generated.
        deadline = time.monotonic() + 10
        while (record := http.get(f"/v1/keel/requests/{request_id}")).status_code == 404:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert record.json()["status_code"] == 499
    assert record.json()["completion_tokens"] < 1500


def test_graceful_stop_flushes_every_request_record(
    server: tuple[str, Path, subprocess.Popen[str]],
) -> None:
    url, home, process = server
    request_ids = set()
    with httpx.Client(base_url=url) as http:
        for _ in range(20):
            response = http.post("/v1/embeddings", json={"model": EMBED, "input": "flush me"})
            request_ids.add(response.headers["x-keel-request-id"])
    # Stop at once, while the last records are likely still queued in memory.
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0
    with sqlite3.connect(home / "keel.db") as connection:
        stored = {row[0] for row in connection.execute("SELECT id FROM request_records")}
    assert request_ids <= stored
