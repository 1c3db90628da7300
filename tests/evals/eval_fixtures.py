"""Shared set-up for the suite and search tests: a gateway over the fake upstream with two
models whose answers are known, and a dataset whose scores follow by hand.

`m-echo` answers "Echo: <the prompt>"; `m-yes` always answers "yes". Ten questions, seven of
whose expected answers are "yes": m-yes scores 7/10 on exact match and on contains whatever
the prompt; m-echo scores 0 on exact match, and on contains 1 with the `hinted` prompt (which
quotes the expected answer, so the echo contains it) and 0 with `bare`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tests.fakes.openai import FakeOpenAI, Reply

EXPECTED = ["yes", "yes", "no", "yes", "yes", "no", "yes", "yes", "no", "yes"]
ROWS = [{"question": f"q{i}", "expected": answer} for i, answer in enumerate(EXPECTED, 1)]
# USD per 1M tokens; the fake counts one token per word.
PRICES = {"m-echo": {"input": 1.0, "output": 2.0}, "m-yes": {"input": 10.0, "output": 20.0}}


def deployments(fake_openai_url: str) -> list[dict[str, Any]]:
    return [
        {"id": name, "provider": "openai", "api_base": fake_openai_url, "api_key": "sk-test-1"}
        for name in ("m-echo", "m-yes")
    ]


def script(fake: FakeOpenAI) -> None:
    fake.faults["m-yes"] = Reply(content="yes")


def write_dataset(folder: Path, rows: list[dict[str, Any]] | None = None) -> Path:
    path = folder / "questions.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows or ROWS), encoding="utf-8")
    return path


def suite_dict(**overrides: Any) -> dict[str, Any]:
    suite: dict[str, Any] = {
        "name": "yes-no",
        "models": ["m-echo", "m-yes"],
        "prompts": [
            {"id": "bare", "template": "{{ question }}"},
            {"id": "hinted", "template": "{{ question }} (answer: {{ expected }})"},
        ],
        "dataset": {"path": "questions.jsonl"},
        "scorers": ["exact_match", "contains"],
        "params": {"max_tokens": 8},
        "concurrency": 4,
    }
    suite.update(overrides)
    return suite


def write_suite(folder: Path, **overrides: Any) -> Path:
    write_dataset(folder)
    path = folder / "suite.yaml"
    path.write_text(yaml.safe_dump(suite_dict(**overrides)), encoding="utf-8")
    return path


def write_config(folder: Path, home: Path, fake_openai_url: str, **extra: Any) -> Path:
    """A keel.yaml for the embedded gateway: the two fake models, no bundled ones."""
    config = {
        "home": str(home),
        "local_models": {"chat": False, "embeddings": False},
        "models": deployments(fake_openai_url),
        "prices": PRICES,
        **extra,
    }
    path = folder / "keel.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path
