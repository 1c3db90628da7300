"""Traffic for the drift tests: prompts on two topics, of two lengths, drawn with a seed."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from keel.config import Settings


def _words(text: str) -> list[str]:
    return text.split()


COOKING = _words(
    "roast chicken garlic lemon oven thyme butter potatoes gravy soup lentils onion carrots "
    "simmer bake bread dough yeast flour sugar salt pepper pasta sauce tomato basil"
)
CODING = _words(
    "python function class generator iterator exception thread async await database query "
    "index compiler variable loop recursion stack heap memory pointer module package test "
    "debugger refactor interface"
)


def prompt(rng: random.Random, words: list[str], low: int, high: int) -> str:
    return " ".join(rng.choice(words) for _ in range(rng.randint(low, high)))


def ask(content: str, model: str = "gpt") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}]}


def now() -> str:
    return datetime.now(UTC).isoformat()


def capture_settings(home: Path, api_base: str, **extra: Any) -> Settings:
    drift = {"capture": True, "flush_interval_s": 0.05, **extra.pop("drift", {})}
    return Settings.model_validate(
        {
            "home": str(home),
            "local_models": {"chat": False, "embeddings": True},
            "models": [{"id": "gpt", "provider": "openai", "api_base": api_base}],
            "server": {"record_flush_interval_s": 0.01},
            "drift": drift,
            **extra,
        }
    )
