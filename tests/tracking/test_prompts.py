"""Prompt templates: versions, aliases and their history, rendering in the sandbox, and the
variable checks a suite runs before any call; on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from keel.errors import InvalidRequestError, NotFoundError
from keel.store import Database
from keel.tracking.prompts import PromptStore, missing_fields
from tests.tracking.library_helpers import library_database

__all__ = ["library_database"]

CHAT = [
    {"role": "system", "content": "Answer in {{ language }}."},
    {"role": "user", "content": "Q: {{ question }}{% if hint %} (hint: {{ hint }}){% endif %}"},
]


def test_versions_aliases_and_history(library_database: Database) -> None:
    store = PromptStore(library_database)
    first = store.add("qa", "Q: {{ question }}", description="bare")
    assert (first.version, first.created, first.variables) == (1, True, {"question"})
    assert store.add("qa", "Q: {{ question }}").created is False  # same content, same version
    second = store.add("qa", CHAT)
    assert second.version == 2
    assert second.variables == {"language", "question", "hint"}
    assert store.get("qa").version == 2  # no production alias yet: the latest
    store.set_alias("qa", "production", 1)
    assert store.get("qa").version == 1  # a plain name follows production
    assert store.get("qa@production").version == 1
    assert store.get("qa@latest").version == 2
    assert store.get("qa@2").template == CHAT
    store.set_alias("qa", "production", 2)
    history = store.alias_history("qa", "production")
    assert [(m.from_version, m.to_version) for m in history] == [(None, 1), (1, 2)]
    assert store.get("qa@2").aliases == ["production"]
    summary = store.list()[0]
    assert (summary.name, summary.latest_version, summary.aliases) == ("qa", 2, {"production": 2})
    with pytest.raises(NotFoundError, match="no alias 'staging'"):
        store.get("qa@staging")
    with pytest.raises(NotFoundError, match="no version 7"):
        store.set_alias("qa", "staging", 7)
    with pytest.raises(InvalidRequestError, match="invalid alias"):
        store.set_alias("qa", "3", 1)


def test_rendering_text_and_chat(library_database: Database) -> None:
    store = PromptStore(library_database)
    text = store.add("bare", "Capital of {{ country }}?")
    assert text.render({"country": "Peru"}) == [{"role": "user", "content": "Capital of Peru?"}]
    chat = store.add("chat", CHAT)
    assert chat.render({"language": "French", "question": "2+2?", "hint": "even"}) == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Q: 2+2? (hint: even)"},
    ]
    with pytest.raises(InvalidRequestError, match="missing variable 'question'") as info:
        chat.render({"language": "French", "hint": ""})
    assert info.value.code == "missing_variable"


def test_the_sandbox_and_template_errors(library_database: Database) -> None:
    store = PromptStore(library_database)
    with pytest.raises(InvalidRequestError, match="syntax error on line 1"):
        store.add("broken", "{{ question ")
    with pytest.raises(InvalidRequestError, match=r"template\[0\]\.role"):
        store.add("roles", [{"role": "wizard", "content": "x"}])
    sneaky = store.add("sneaky", "{{ items.append(1) }}{{ items }}")
    with pytest.raises(InvalidRequestError, match="refused by the sandbox"):
        sneaky.render({"items": []})
    dunder = store.add("dunder", "{{ value.__class__.__mro__ }}")
    with pytest.raises(InvalidRequestError):
        dunder.render({"value": "x"})
    with pytest.raises(InvalidRequestError, match="'topic', which is not declared"):
        store.add("declared", "{{ question }} {{ topic }}", variables=["question"])


def test_each_dataset_row_is_checked_before_any_call(library_database: Database) -> None:
    prompt = PromptStore(library_database).add("qa", CHAT)
    rows = [
        {"language": "en", "question": "a", "hint": ""},
        {"language": "en", "hint": ""},
        {"question": "c"},
    ]
    assert missing_fields(prompt, rows) == [
        "row 2 lacks field 'question'",
        "row 3 lacks field 'hint'",
        "row 3 lacks field 'language'",
    ]
