"""What the request-fidelity tests share: a Keel with one OpenAI deployment in front of the fake
OpenAI server (upstream name `gpt-4o-mini`) and three translating providers whose upstream is a
closed port, so a request that reached them would fail as a 5xx rather than a 400."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from keel.config import Settings
from tests.conftest import remote_settings

UPSTREAM_MODEL = "gpt-4o-mini"
CLOSED_PORT = "http://127.0.0.1:9"
JSON = {"content-type": "application/json"}
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
USER = {"role": "user", "content": "What is the weather in Paris?"}


def wire_settings(home: Path, fake_openai_url: str) -> Settings:
    translating = [
        {"id": "claude", "provider": "anthropic", "model": "claude-sonnet-4-5"},
        {"id": "gemini", "provider": "gemini", "model": "gemini-2.5-flash"},
        {"id": "cohere", "provider": "cohere", "model": "command-a-03-2025"},
    ]
    return remote_settings(
        home,
        [
            {
                "id": "gpt",
                "provider": "openai",
                "model": UPSTREAM_MODEL,
                "api_base": fake_openai_url,
                "api_key": "sk-test-secret-123",
            },
            *({**model, "api_base": CLOSED_PORT, "api_key": "k"} for model in translating),
        ],
        routing={"retry": {"max_attempts": 1}},
    )


def canonical(value: Any) -> str:
    """JSON text that tells `1` from `1.0` and null from absent, with key order left out."""
    return json.dumps(value, sort_keys=True)


def upstream_view(body: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """What the upstream must receive for `body`: the same, with the upstream model name."""
    return {**body, "model": UPSTREAM_MODEL, **changes}
