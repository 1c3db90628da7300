"""Model-card schema: the seed's example imports verbatim and normalises; round trips hold."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from keel.registry.cards import (
    CardLimits,
    DeclaredBenchmark,
    ModelCard,
    card_diff,
    card_digest,
    card_document,
    dump_card,
    load_card,
    parse_card,
    to_huggingface,
)
from keel.registry.normalize import (
    parse_constraint,
    parse_count,
    parse_duration_ms,
    parse_fraction,
    parse_usd_per_1m_tokens,
)

SEED_FLOW = """\
name: GPT-4 Curie
type: Generative, few-shot learning
description: High-performing multipurpose LLM for natural language
benchmark: {accuracy: 90%, latency: 200ms, cost: $0.002/1k tokens}
capabilities: [Natural language generation, Classification, Sentiment analysis, Summarization, Grammar correction]
constraints: [Max sequence length 2,000 tokens, No audio or image inputs, Rate limited to 10k tokens daily]
integrator_guide: https://wiki.example.com/gpt4
sdk: [Python, Node.js, Java]
endpoint: [https://api.example.com/v1/curie]
"""  # noqa: E501  (verbatim from the issue)

SEED_BLOCK = """\
name: GPT-4 Curie
type: Generative, few-shot learning
description: High-performing multipurpose LLM for natural language
benchmark:
  accuracy: 90%
  latency: 200ms
  cost: $0.002/1k tokens
capabilities: [Natural language generation, Classification, Sentiment analysis, Summarization, Grammar correction]
constraints:
  - "Max sequence length: 2,000 tokens"
  - No audio, image inputs
  - Rate limited to 10k tokens daily
integrator_guide: https://wiki.com/gpt4
sdk: [Python, Node.js, Java]
endpoint: [https://openai.com/api/curie]
"""  # noqa: E501


@pytest.mark.parametrize("text", [SEED_FLOW, SEED_BLOCK], ids=["flow", "block"])
def test_seed_imports_and_normalizes(text: str) -> None:
    card = load_card(text)
    assert card.name == "GPT-4 Curie"
    assert card.type == "Generative, few-shot learning"
    assert card.benchmark.accuracy == 0.9
    assert card.benchmark.latency_ms == 200
    assert card.benchmark.usd_per_1m_tokens == 2.0
    assert card.benchmark.original == {
        "accuracy": "90%",
        "latency": "200ms",
        "cost": "$0.002/1k tokens",
    }
    assert card.limits == CardLimits(
        max_input_tokens=2000,
        rejected_modalities=frozenset({"audio", "image"}),
        tokens_per_day=10000,
    )
    assert len(card.capabilities) == 5
    assert card.sdk == ["Python", "Node.js", "Java"]
    assert len(card.endpoint) == 1
    assert card.extra == {}


def test_flow_list_split_at_thousands_comma_is_rejoined() -> None:
    card = load_card(SEED_FLOW)
    assert card.constraints == [
        "Max sequence length 2,000 tokens",
        "No audio or image inputs",
        "Rate limited to 10k tokens daily",
    ]
    block = load_card(SEED_BLOCK)
    assert block.constraints[0] == "Max sequence length: 2,000 tokens"
    assert block.constraints[1] == "No audio, image inputs"


@pytest.mark.parametrize("text", [SEED_FLOW, SEED_BLOCK], ids=["flow", "block"])
def test_round_trips(text: str) -> None:
    card = load_card(text)
    assert load_card(dump_card(card)) == card
    assert load_card(dump_card(card, "json")) == card
    assert load_card(dump_card(card, "json"), format="json") == card
    assert parse_card(card_document(card)) == card
    assert parse_card(card.model_dump()) == card
    assert card_digest(load_card(dump_card(card))) == card_digest(card)
    assert card_document(card)["benchmark"]["cost"] == "$0.002/1k tokens"


def test_digest_ignores_key_order_and_whitespace() -> None:
    # Same card, keys in reverse order and different whitespace, written as JSON.
    data = card_document(load_card(SEED_FLOW))
    shuffled = dict(reversed(list(data.items())))
    shuffled["benchmark"] = dict(reversed(list(data["benchmark"].items())))
    spaced = json.dumps(shuffled, indent=7)
    a, b = load_card(SEED_FLOW), load_card(spaced)
    assert a == b
    assert card_digest(a) == card_digest(b)
    assert card_digest(a).startswith("sha256:") and len(card_digest(a)) == 7 + 64
    assert card_digest(a) != card_digest(load_card(SEED_BLOCK))


def test_unknown_fields_kept_under_extra_and_round_trip() -> None:
    card = parse_card({"name": "m", "release_date": "2024-05-01", "family": {"size": "7B"}})
    assert card.extra == {"release_date": "2024-05-01", "family": {"size": "7B"}}
    doc = card_document(card)
    assert doc["release_date"] == "2024-05-01" and "extra" not in doc
    assert parse_card(doc) == card
    clash = ModelCard(name="m", extra={"name": "shadow"})
    assert parse_card(card_document(clash)) == clash


def test_optional_fields() -> None:
    card = parse_card(
        {
            "name": "m",
            "gateway_model": "chat-default",
            "examples": [{"input": "hi", "output": "hello"}],
            "training": {"data": "web text", "method": "SFT"},
            "license": "apache-2.0",
            "owners": "ml-team",
            "tags": ["chat"],
            "limitations": ["May hallucinate"],
            "intended_use": "support bots",
            "version_notes": "first",
        }
    )
    assert card.gateway_model == "chat-default"
    assert card.examples[0].output == "hello"
    assert card.training is not None and card.training.method == "SFT"
    assert card.owners == ["ml-team"]
    assert parse_card(card_document(card)) == card


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"name": 42}, "name"),
        ({"name": "m", "benchmark": {"accuracy": "high"}}, "accuracy"),
        ({"name": "m", "benchmark": {"latency": "fast"}}, "latency_ms"),
        ({"name": "m", "benchmark": {"cost": "cheap"}}, "usd_per_1m_tokens"),
        ({"name": "m", "benchmark": {"accuracy": 1.5}}, "accuracy"),
        ({"name": "m", "capabilities": {"a": "b"}}, "capabilities"),
        ({"name": "m", "sdk": [1, 2]}, "sdk"),
        ({"name": "m", "limits": {"rejected_modalities": ["smell"]}}, "rejected_modalities"),
        ({"name": "m", "examples": [{"input": "x"}]}, "output"),
        ({"type": "x"}, "name"),
    ],
)
def test_wrong_types_rejected_naming_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_card(data)
    assert field in str(info.value)


def test_single_string_becomes_one_item_list() -> None:
    card = parse_card(
        {"name": "m", "capabilities": "Summarization", "constraints": "text only", "sdk": "Go"}
    )
    assert card.capabilities == ["Summarization"]
    assert card.sdk == ["Go"]
    assert card.limits.rejected_modalities == frozenset({"image", "audio", "video", "file"})


def test_unparseable_constraints_are_kept_as_text() -> None:
    card = parse_card({"name": "m", "constraints": ["Be nice to it", "EU data residency"]})
    assert card.constraints == ["Be nice to it", "EU data residency"]
    assert card.limits == CardLimits()


def test_explicit_limits_win_and_round_trip() -> None:
    card = parse_card(
        {
            "name": "m",
            "constraints": ["Max sequence length 2,000 tokens", "No audio inputs"],
            "limits": {"max_input_tokens": "8k", "requests_per_minute": 60},
        }
    )
    assert card.limits.max_input_tokens == 8000
    assert card.limits.requests_per_minute == 60
    assert card.limits.rejected_modalities == frozenset({"audio"})
    assert card_document(card)["limits"] == {"max_input_tokens": 8000, "requests_per_minute": 60}
    assert parse_card(card_document(card)) == card
    with pytest.raises(ValidationError):
        card.limits.max_input_tokens = 1  # type: ignore[misc]


def test_benchmark_built_in_code_round_trips() -> None:
    card = ModelCard(name="m", benchmark=DeclaredBenchmark(accuracy=0.75, latency_ms=1200))
    assert card.benchmark.original == {"accuracy": "0.75", "latency_ms": "1200"}
    assert parse_card(card_document(card)) == card
    other = parse_card({"name": "m", "benchmark": {"f1": 0.8, "accuracy": 0.9}})
    assert other.benchmark.other == {"f1": "0.8"}
    assert other.benchmark.accuracy == 0.9


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$0.002/1k tokens", 2.0),
        ("$2 per 1M tokens", 2.0),
        ("0.002 USD/1K", 2.0),
        ("$3/MTok", 3.0),
        ("$0.01 per 1,000 tokens", 10.0),
        ("$0.000001/token", 1.0),
        ("$0.5 per million tokens", 0.5),
        (2.5, 2.5),
    ],
)
def test_cost_phrasings(text: object, expected: float) -> None:
    assert parse_usd_per_1m_tokens(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("200ms", 200), ("1.2s", 1200), ("~300 ms", 300), ("2 seconds", 2000), (150, 150)],
)
def test_latency_phrasings(text: object, expected: float) -> None:
    assert parse_duration_ms(text) == expected


def test_fraction_and_count() -> None:
    assert parse_fraction("90%") == 0.9
    assert parse_fraction("0.85") == 0.85
    assert parse_count("2,000") == 2000
    assert parse_count("4k") == 4000
    with pytest.raises(ValueError):
        parse_fraction(True)


@pytest.mark.parametrize(
    ("sentence", "field", "value"),
    [
        ("Max sequence length 2,000 tokens", "max_input_tokens", 2000),
        ("Max sequence length: 2,000 tokens", "max_input_tokens", 2000),
        ("max output 4k tokens", "max_output_tokens", 4000),
        ("context window 128k", "max_input_tokens", 128000),
        ("Rate limited to 10k tokens daily", "tokens_per_day", 10000),
        ("100 requests per minute", "requests_per_minute", 100),
        ("1M tokens per day", "tokens_per_day", 1_000_000),
        ("60 RPM", "requests_per_minute", 60),
    ],
)
def test_limit_phrasings(sentence: str, field: str, value: int) -> None:
    facts = parse_constraint(sentence)
    assert getattr(facts, field) == value
    if field in ("tokens_per_day", "requests_per_minute"):
        assert facts.max_input_tokens is None  # a quota is not a context limit


@pytest.mark.parametrize(
    ("sentence", "modalities"),
    [
        ("No audio or image inputs", {"audio", "image"}),
        ("No audio, image inputs", {"audio", "image"}),
        ("text only", {"image", "audio", "video", "file"}),
        ("Supports image input but not audio", {"audio"}),
        ("Does not accept video", {"video"}),
    ],
)
def test_modality_phrasings(sentence: str, modalities: set[str]) -> None:
    assert parse_constraint(sentence).rejected_modalities == modalities


def test_two_limits_in_one_sentence() -> None:
    facts = parse_constraint("8k input / 2k output tokens")
    assert (facts.max_input_tokens, facts.max_output_tokens) == (8000, 2000)


def test_yaml_syntax_error_has_line_info() -> None:
    with pytest.raises(ValueError, match="line 2"):
        load_card("name: m\nconstraints: [a: b: c\n")
    with pytest.raises(ValueError, match="line 1"):
        load_card('{"name": ', format="json")
    with pytest.raises(ValueError, match="mapping"):
        load_card("- just a list\n")


def test_huggingface_export_keeps_declared_and_measured_apart() -> None:
    card = parse_card({**card_document(load_card(SEED_FLOW)), "license": "mit", "tags": ["chat"]})
    measured = [
        {"metric": "accuracy", "value": 0.87, "dataset": "mmlu", "run_id": "run-1"},
        {"metric": "f1", "value": 0.8, "dataset": "mmlu", "run_id": "run-1"},
        {"metric": "accuracy", "value": 0.88, "dataset": "mmlu", "run_id": "run-2"},
    ]
    meta = to_huggingface(card, measured)
    assert meta["license"] == "mit" and meta["tags"] == ["chat"]
    assert meta["pipeline_tag"] == "text-generation"
    (entry,) = meta["model-index"]
    assert entry["name"] == "GPT-4 Curie"
    declared, run1, run2 = entry["results"]
    assert declared["source"] == {"name": "declared"}
    assert declared["task"] == {"type": "text-generation"}
    assert {m["type"]: m["value"] for m in declared["metrics"]} == {
        "accuracy": 0.9,
        "latency_ms": 200.0,
        "usd_per_1m_tokens": 2.0,
    }
    assert run1["source"] == {"name": "measured"}
    assert run1["dataset"] == {"name": "mmlu", "type": "mmlu"}
    assert [m["value"] for m in run1["metrics"]] == [0.87, 0.8]
    assert run2["metrics"][0]["args"] == {"run_id": "run-2"}
    assert all(set(m) >= {"type", "value", "name"} for m in run1["metrics"])
    assert "model-index" not in to_huggingface(ModelCard(name="bare"))


def test_card_diff() -> None:
    a = load_card(SEED_FLOW)
    b = parse_card({**card_document(a), "description": "new", "license": "mit"})
    assert card_diff(a, a) == {}
    assert card_diff(a, b) == {
        "description": {"from": a.description, "to": "new"},
        "license": {"from": None, "to": "mit"},
    }
    assert set(card_diff(a, load_card(SEED_BLOCK))) == {
        "constraints",
        "integrator_guide",
        "endpoint",
    }


def test_numbers_in_exponent_form_round_trip() -> None:
    card = parse_card({"name": "x", "benchmark": {"latency": 1e-7}})
    assert card.benchmark.original == {"latency": "0.0000001"}
    assert parse_card(card_document(card)) == card
