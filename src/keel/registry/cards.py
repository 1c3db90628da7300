"""Model cards: the registry's description of a model, as authors write them in YAML or JSON.

Authors write free text ("90%", "200ms", "$0.002/1k tokens", "Max sequence length 2,000
tokens"). A card keeps that text verbatim (it is what `card_document` gives back, so export and
round trips show the author's words) and carries typed, normalised values beside it for code.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from keel.registry import normalize as nz

__all__ = [
    "CardDataError",
    "CardExample",
    "CardLimits",
    "CardTraining",
    "DeclaredBenchmark",
    "ModelCard",
    "card_diff",
    "card_digest",
    "card_document",
    "check_json_data",
    "derive_limits",
    "dump_card",
    "load_card",
    "parse_card",
    "to_huggingface",
]

MAX_NAME_LENGTH = 200
_COUNT_FIELDS = ("max_input_tokens", "max_output_tokens", "tokens_per_day", "requests_per_minute")


class CardLimits(BaseModel):
    """Hard limits a model states; None (or empty) where the card says nothing."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_input_tokens: int | None = None
    max_output_tokens: int | None = None
    rejected_modalities: frozenset[str] = frozenset()
    tokens_per_day: int | None = None
    requests_per_minute: int | None = None

    @field_validator(*_COUNT_FIELDS, mode="before")
    @classmethod
    def _count(cls, value: Any) -> Any:
        return None if value is None else nz.parse_count(value)

    @field_validator("rejected_modalities", mode="before")
    @classmethod
    def _modalities(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple | set | frozenset):
            return value  # pydantic rejects it with its own message
        if not all(isinstance(item, str) for item in value):
            raise ValueError("modalities must be strings")
        names = frozenset(item.strip().lower() for item in value)
        if unknown := names - nz.MODALITIES:
            raise ValueError(f"unknown modalities {sorted(unknown)}; use {sorted(nz.MODALITIES)}")
        return names


# Author keys that carry a typed benchmark; anything else is kept as an `other` metric.
_BENCHMARK_ALIASES = {
    "accuracy": ("accuracy", "acc"),
    "latency_ms": ("latency", "latency_ms"),
    "usd_per_1m_tokens": ("cost", "price", "usd_per_1m_tokens"),
}
_BENCHMARK_KEYS = {alias: name for name, aliases in _BENCHMARK_ALIASES.items() for alias in aliases}


class DeclaredBenchmark(BaseModel):
    """Benchmarks as the author declares them (measured ones live with evaluation runs)."""

    model_config = ConfigDict(extra="forbid")

    accuracy: float | None = Field(default=None, ge=0, le=1)
    latency_ms: float | None = Field(default=None, ge=0)
    usd_per_1m_tokens: float | None = Field(default=None, ge=0)
    other: dict[str, str] = {}
    original: dict[str, str] = {}

    @model_validator(mode="before")
    @classmethod
    def _from_author_form(cls, data: Any) -> Any:
        # The stored form (model_dump) carries `original`; anything else is what an author wrote.
        if not isinstance(data, Mapping) or "original" in data:
            return data
        typed: dict[str, Any] = {}
        other: dict[str, str] = {}
        original: dict[str, str] = {}
        for raw_key, value in data.items():
            key = str(raw_key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise ValueError(f"benchmark {key!r} must be a number or text, got {value!r}")
            text = value if isinstance(value, str) else _plain_number(value)
            original[key] = text
            target = _BENCHMARK_KEYS.get(key.strip().lower())
            if target is None:
                other[key] = text
            else:
                typed[target] = value
        return {**typed, "other": other, "original": original}

    @field_validator("accuracy", mode="before")
    @classmethod
    def _accuracy(cls, value: Any) -> Any:
        return None if value is None else nz.parse_fraction(value)

    @field_validator("latency_ms", mode="before")
    @classmethod
    def _latency(cls, value: Any) -> Any:
        return None if value is None else nz.parse_duration_ms(value)

    @field_validator("usd_per_1m_tokens", mode="before")
    @classmethod
    def _cost(cls, value: Any) -> Any:
        return None if value is None else nz.parse_usd_per_1m_tokens(value)

    @model_validator(mode="after")
    def _fill_original(self) -> DeclaredBenchmark:
        # A benchmark built in code has no author text; write one that parses back to the value
        # so card_document stays complete and round trips stay equal.
        covered = {_BENCHMARK_KEYS.get(key.strip().lower()) for key in self.original}
        filled = dict(self.original)
        for name in _BENCHMARK_ALIASES:
            value = getattr(self, name)
            if value is not None and name not in covered:
                filled[name] = _plain_number(value)  # bare numbers: 0..1, ms and USD/1M
        for key, text in self.other.items():
            filled.setdefault(key, text)
        self.original = filled
        return self


def _plain_number(value: int | float) -> str:
    """A number in plain decimal form ("0.0000001", not "1e-07"), which the parsers read back."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}")
    text = str(value)
    return format(Decimal(text), "f") if "e" in text.lower() else text


class CardExample(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str
    output: str


class CardTraining(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str | None = None
    method: str | None = None


_LIST_FIELDS = ("capabilities", "constraints", "sdk", "endpoint", "owners", "tags", "limitations")


class ModelCard(BaseModel):
    """A registry entry. Field order is the order `card_document` writes them in."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH)
    type: str | None = None
    description: str | None = None
    benchmark: DeclaredBenchmark = DeclaredBenchmark()
    capabilities: list[str] = []
    constraints: list[str] = []
    limits: CardLimits = CardLimits()
    integrator_guide: str | None = None
    sdk: list[str] = []
    endpoint: list[str] = []
    gateway_model: str | None = Field(default=None, max_length=255)
    examples: list[CardExample] = []
    training: CardTraining | None = None
    license: str | None = None
    owners: list[str] = []
    tags: list[str] = []
    limitations: list[str] = []
    intended_use: str | None = None
    version_notes: str | None = None
    extra: dict[str, Any] = {}

    @field_validator("name", mode="after")
    @classmethod
    def _name(cls, value: str) -> str:
        # '/' would make `team/diff` collide with the routes' own words (the registry refuses
        # '@', which separates a name from its version or alias in references).
        if "/" in value or "\x00" in value:
            raise ValueError("a model name cannot contain '/' or NUL characters")
        return value

    @field_validator("extra", mode="after")
    @classmethod
    def _json_extra(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_json_data(value)
        return value

    @model_validator(mode="before")
    @classmethod
    def _collect_extra(cls, data: Any) -> Any:
        # Unknown top-level fields are the author's business, not a mistake: keep them.
        if not isinstance(data, Mapping):
            return data
        known = {key: value for key, value in data.items() if key in cls.model_fields}
        unknown = {str(key): value for key, value in data.items() if key not in cls.model_fields}
        if unknown:
            explicit = known.get("extra") or {}
            known["extra"] = {**explicit, **unknown} if isinstance(explicit, Mapping) else explicit
        return known

    @field_validator(*_LIST_FIELDS, mode="before")
    @classmethod
    def _one_item_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("constraints", "limitations", mode="after")
    @classmethod
    def _rejoin(cls, value: list[str]) -> list[str]:
        return nz.merge_split_numbers(value)

    @model_validator(mode="after")
    def _derive_limits(self) -> ModelCard:
        # Limits the author states under `limits:` win over what the constraint prose says.
        explicit = {name: getattr(self.limits, name) for name in self.limits.model_fields_set}
        self.limits = derive_limits(self.constraints).model_copy(update=explicit)
        return self


def derive_limits(constraints: Sequence[str]) -> CardLimits:
    """The limits that constraint sentences state (see `normalize.parse_constraints`)."""
    return CardLimits(**dataclasses.asdict(nz.parse_constraints(constraints)))


def parse_card(data: Mapping[str, Any]) -> ModelCard:
    """Validate an author's card; raises pydantic.ValidationError naming the bad field."""
    return ModelCard.model_validate(data)


def load_card(text: str, format: Literal["yaml", "json"] | None = None) -> ModelCard:
    """Parse card text. Without `format`, text starting with `{` is tried as JSON, then YAML.

    Syntax errors raise ValueError with the line and column; schema errors ValidationError.
    """
    data: Any
    if format == "json" or (format is None and text.lstrip().startswith("{")):
        try:
            data = json.loads(text, parse_constant=_no_constant)
        except json.JSONDecodeError as exc:
            if format == "json":
                raise ValueError(
                    f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
                ) from exc
            data = _load_yaml(text)  # `{a: b}` is a YAML flow mapping, not broken JSON
    else:
        data = _load_yaml(text)
    if not isinstance(data, Mapping):
        raise ValueError(f"a model card must be a mapping, got {type(data).__name__}")
    check_json_data(data)
    return parse_card(data)


class _CardLoader(yaml.SafeLoader):
    """YAML's safe subset, with timestamps kept as the text the author wrote."""


def _timestamp_as_text(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    return str(loader.construct_scalar(node))  # type: ignore[arg-type]


_CardLoader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_as_text)


class CardDataError(ValueError):
    """A card value that is not plain JSON; `param` is its dotted path ("" for the card)."""

    def __init__(self, param: str, problem: str) -> None:
        super().__init__(f"{param or 'card'}: {problem}")
        self.param = param


def check_json_data(data: Any, where: str = "") -> None:
    """Raise ValueError unless `data` is plain JSON: mappings with string keys, lists,
    strings (valid Unicode), finite numbers, booleans and null, with no shared or circular
    references (YAML anchors, !!binary, !!set and the like never reach a stored card)."""
    stack: list[tuple[Any, str]] = [(data, where)]
    seen: set[int] = set()
    while stack:
        value, path = stack.pop()
        if value is None or isinstance(value, bool | int):
            continue
        if isinstance(value, float):
            if not math.isfinite(value):
                raise CardDataError(path, f"numbers must be finite, got {value!r}")
        elif isinstance(value, str):
            _check_text(value, path)
        elif isinstance(value, Mapping | list | tuple):
            if id(value) in seen:
                raise CardDataError(path, "repeated or circular references are not allowed")
            seen.add(id(value))
            if isinstance(value, Mapping):
                for key, item in value.items():
                    if not isinstance(key, str):
                        raise CardDataError(path, f"keys must be text, got {key!r}")
                    _check_text(key, path)
                    stack.append((item, f"{path}.{key}" if path else key))
            else:
                stack.extend(
                    (item, f"{path}.{index}" if path else str(index))
                    for index, item in enumerate(value)
                )
        else:
            kind = type(value).__name__
            raise CardDataError(path, f"{kind} values are not allowed in a model card")


def _check_text(value: str, path: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise CardDataError(path, "text holds an invalid (lone surrogate) character") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number; numbers must be finite")


def _load_yaml(text: str) -> Any:
    try:
        # Refuse aliases before anything is built: an alias bomb never expands.
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                mark = event.start_mark
                where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
                raise ValueError(f"invalid YAML{where}: anchors and aliases are not allowed")
        return yaml.load(text, Loader=_CardLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValueError(f"invalid YAML{where}: {exc.problem or exc.context}") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"invalid YAML: {exc}") from exc


def _explicit_limits(card: ModelCard) -> dict[str, Any]:
    """The limits the constraint prose does not already imply, i.e. what `limits:` must say."""
    derived = derive_limits(card.constraints)
    out: dict[str, Any] = {}
    for name in CardLimits.model_fields:
        value = getattr(card.limits, name)
        if value != getattr(derived, name):
            out[name] = sorted(value) if isinstance(value, frozenset) else value
    return out


def card_document(card: ModelCard) -> dict[str, Any]:
    """The card in the author's form: original texts, empty fields left out, unknown fields
    back at the top level. `parse_card(card_document(card)) == card`."""
    doc: dict[str, Any] = {}
    for name in ModelCard.model_fields:
        value: Any = getattr(card, name)
        if name == "benchmark":
            value = dict(card.benchmark.original)
        elif name == "limits":
            value = _explicit_limits(card)
        elif name == "examples":
            value = [example.model_dump() for example in card.examples]
        elif name == "training":
            value = card.training.model_dump(exclude_none=True) if card.training else None
        elif name == "extra":
            continue
        elif isinstance(value, list):
            value = list(value)
        if value is not None and value != [] and value != {}:
            doc[name] = value
    # An extra key named like a field would be read back as that field; nest those instead.
    clashing = {key: value for key, value in card.extra.items() if key in ModelCard.model_fields}
    for key, value in card.extra.items():
        if key not in clashing:
            doc[key] = copy.deepcopy(value)
    if clashing:
        doc["extra"] = copy.deepcopy(clashing)
    return doc


def dump_card(card: ModelCard, format: Literal["yaml", "json"] = "yaml") -> str:
    doc = card_document(card)
    if format == "json":
        return json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n"
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, default_flow_style=False)


def card_digest(card: ModelCard) -> str:
    """A content address for the card: independent of key order and formatting."""
    canonical = json.dumps(
        card_document(card), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _hf_result(
    task: dict[str, str], dataset: str, metrics: list[dict[str, Any]], source: str
) -> dict[str, Any]:
    return {
        "task": task,
        "dataset": {"name": dataset, "type": dataset},
        "metrics": metrics,
        "source": {"name": source},
    }


def to_huggingface(card: ModelCard, measured: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """Hugging Face model-card metadata (the README's YAML header).

    Declared benchmarks and measured ones (items {"metric", "value", "dataset", "run_id"}) go
    into separate `model-index` results, told apart by `source.name`, so nobody reads an
    author's claim as a measurement.
    """
    task = {"type": nz.hf_pipeline_tag(card.type)}
    meta: dict[str, Any] = {}
    if card.license:
        meta["license"] = card.license
    meta["pipeline_tag"] = task["type"]
    if card.tags:
        meta["tags"] = list(card.tags)
    results: list[dict[str, Any]] = []
    bench = card.benchmark
    declared = [
        {"type": name, "value": getattr(bench, name), "name": f"{name} (declared)"}
        for name in ("accuracy", "latency_ms", "usd_per_1m_tokens")
        if getattr(bench, name) is not None
    ]
    declared += [
        {"type": key, "value": nz.metric_value(text), "name": f"{key} (declared)"}
        for key, text in bench.other.items()
    ]
    if declared:
        results.append(_hf_result(task, "declared", declared, "declared"))
    # One result per (dataset, run): HF groups metrics by dataset, and runs must not blend.
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for item in measured:
        dataset, run_id, metric = str(item["dataset"]), str(item["run_id"]), str(item["metric"])
        groups.setdefault((dataset, run_id), []).append(
            {
                "type": metric,
                "value": item["value"],
                "name": f"{metric} (measured, run {run_id})",
                # `args` is HF's free-form slot; keeping the run there keeps the header valid.
                "args": {"run_id": run_id},
            }
        )
    for (dataset, _), metrics in groups.items():
        results.append(_hf_result(task, dataset, metrics, "measured"))
    if results:
        meta["model-index"] = [{"name": card.name, "results": results}]
    return meta


def card_diff(a: ModelCard, b: ModelCard) -> dict[str, dict[str, Any]]:
    """Top-level fields of the author's form that differ: field -> {"from": .., "to": ..};
    a field one side leaves out reads as None."""
    doc_a, doc_b = card_document(a), card_document(b)
    keys = list(doc_a) + [key for key in doc_b if key not in doc_a]
    return {
        key: {"from": doc_a.get(key), "to": doc_b.get(key)}
        for key in keys
        if doc_a.get(key) != doc_b.get(key)
    }
