"""The Python SDK against a real Keel server: a stream that fails after it started raises the
error it really is, with the status the same error gets before a stream starts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from keel.sdk import Keel, KeelAPIError
from keel.server import create_app
from tests.conftest import remote_settings
from tests.fakes.anthropic import FakeAnthropic, text_reply
from tests.fakes.openai import CutStream, FakeOpenAI, StreamError
from tests.fakes.server import serve_on_loopback


@pytest.fixture
def anthropic_url() -> Iterator[tuple[FakeAnthropic, str]]:
    fake = FakeAnthropic()
    with serve_on_loopback(fake.app) as url:
        fake.url = url
        yield fake, url


def _keel(home: Path, openai_url: str, anthropic_url: str) -> object:
    models = [
        {"id": "gpt", "provider": "openai", "api_base": openai_url, "api_key": "sk-up-0123"},
        {
            "id": "claude",
            "provider": "anthropic",
            "api_base": anthropic_url,
            "api_key": "sk-ant-test",
            "model": "claude-test",
        },
    ]
    settings = remote_settings(home, models, routing={"retry": {"max_attempts": 1}})
    return create_app(settings)


@pytest.mark.parametrize(
    ("model", "failure", "status", "code"),
    [
        ("gpt", StreamError(after_chunks=1), 502, "upstream_error"),
        ("gpt", CutStream(after_chunks=1), 502, "upstream_unreachable"),
        ("claude", "overloaded_error", 503, "upstream_unavailable"),
        ("claude", "timeout_error", 504, "upstream_timeout"),
    ],
)
def test_a_stream_that_fails_midway_raises_its_real_error(
    keel_home: Path,
    fake_openai: FakeOpenAI,
    fake_openai_url: str,
    anthropic_url: tuple[FakeAnthropic, str],
    model: str,
    failure: object,
    status: int,
    code: str,
) -> None:
    anthropic, url = anthropic_url
    if isinstance(failure, str):
        anthropic.then(text_reply("Hello there, how are you", stream_error=failure))
    else:
        fake_openai.then(failure)  # type: ignore[arg-type]
    app = _keel(keel_home, fake_openai_url, url)
    with serve_on_loopback(app, lifespan="on") as keel_url, Keel(keel_url) as keel:
        chunks = []
        with pytest.raises(KeelAPIError) as raised:
            for chunk in keel.chat_stream(model, "Hi", max_tokens=20):
                chunks.append(chunk)
    assert chunks, "the stream started before it failed"
    assert (raised.value.status_code, raised.value.code) == (status, code)
