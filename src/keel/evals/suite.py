"""Eval suites: prompts x models x dataset x scorers, written in YAML or built in Python.

    name: capitals
    models: [gpt-4o-mini, {id: smollm2-135m-instruct, params: {max_tokens: 16}}]
    prompts:
      - {id: bare, template: "Capital of {{ country }}? One word."}
      - id: chat
        messages: [{role: system, content: Be brief.}, {role: user, content: "{{ country }}"}]
      - qa-prompt@production            # a stored prompt (keel prompts add ...)
    dataset: {path: capitals.jsonl, expected: capital}   # or {ref: capitals@2}, or {rows: [...]}
    scorers: [exact_match, {type: contains}]
    params: {temperature: 0, max_tokens: 32}
    budget: {max_cost_usd: 0.50, max_calls: 1000}

Everything here is checked before any call is made: the file's shape (a mistake names its
field), every row against the variables every prompt needs ("row 7 lacks field 'question'"),
and, by the runner, the models against `GET /v1/models` and the scorers against the scorer API.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from keel.errors import InvalidRequestError

__all__ = [
    "Budget",
    "DatasetSpec",
    "ModelSpec",
    "PromptSpec",
    "ResolvedPrompt",
    "SuiteSpec",
    "canonical_digest",
    "check_rows",
    "inline_prompt",
    "load_suite",
    "read_dataset_file",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Budget(_Strict):
    """What one invocation may spend: new upstream calls and their USD cost (resumed cases
    cost nothing and count for nothing)."""

    max_cost_usd: float | None = Field(default=None, gt=0)
    max_calls: int | None = Field(default=None, ge=1)


class ModelSpec(_Strict):
    id: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)


class PromptSpec(_Strict):
    """An inline template (`template` text or chat `messages`), or `ref` to a stored prompt."""

    id: str | None = None
    template: str | None = None
    messages: list[dict[str, Any]] | None = None
    ref: str | None = None

    @field_validator("messages")
    @classmethod
    def _messages_have_content(
        cls, value: list[dict[str, Any]] | None
    ) -> list[dict[str, Any]] | None:
        for index, message in enumerate(value or []):
            if not isinstance(message.get("role"), str) or not isinstance(
                message.get("content"), str
            ):
                raise ValueError(f"message {index + 1} needs a text `role` and `content`")
        return value

    def label(self) -> str:
        return self.id or self.ref or "prompt"


class DatasetSpec(_Strict):
    """Where the cases come from: a file (JSONL, JSON list, CSV; relative to the suite file),
    a stored dataset `ref` (`name` or `name@3`), or inline `rows`."""

    path: str | None = None
    ref: str | None = None
    rows: list[dict[str, Any]] | None = None
    split: str | None = None
    expected: str = Field(default="expected", min_length=1, description="The answer column.")
    id: str | None = Field(default=None, description="The case-id column (default: row number).")
    limit: int | None = Field(default=None, ge=1, description="Use only the first N rows.")


class SuiteSpec(_Strict):
    name: str = Field(min_length=1, max_length=200)
    description: str | None = None
    models: list[ModelSpec] = Field(min_length=1)
    prompts: list[PromptSpec] = Field(min_length=1)
    dataset: DatasetSpec
    scorers: list[str | dict[str, Any]] = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    concurrency: int = Field(default=4, ge=1, le=256)
    retries: int = Field(default=2, ge=0, le=10)
    budget: Budget = Field(default_factory=Budget)
    experiment: str | None = Field(default=None, description="The run's experiment name.")
    # Where relative dataset paths are read from: the suite file's folder.
    base_dir: str | None = None

    @field_validator("models", mode="before")
    @classmethod
    def _model_shorthand(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"id": item} if isinstance(item, str) else item for item in value]
        return value

    @field_validator("prompts", mode="before")
    @classmethod
    def _prompt_shorthand(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"ref": item} if isinstance(item, str) else item for item in value]
        return value

    @field_validator("prompts")
    @classmethod
    def _one_source_per_prompt(cls, value: list[PromptSpec]) -> list[PromptSpec]:
        labels: set[str] = set()
        for index, prompt in enumerate(value):
            sources = [s for s in (prompt.template, prompt.messages, prompt.ref) if s is not None]
            if len(sources) != 1:
                raise ValueError(
                    f"prompt {index + 1} needs exactly one of `template`, `messages` or `ref`"
                )
            if prompt.ref is None and not prompt.id:
                raise ValueError(f"prompt {index + 1}: an inline prompt needs an `id`")
            if prompt.label() in labels:
                raise ValueError(f"prompt {prompt.label()!r} is listed twice")
            labels.add(prompt.label())
        return value

    @field_validator("models")
    @classmethod
    def _distinct_models(cls, value: list[ModelSpec]) -> list[ModelSpec]:
        seen = [model.id for model in value]
        twice = sorted({model for model in seen if seen.count(model) > 1})
        if twice:
            raise ValueError(f"model {twice[0]!r} is listed twice")
        return value

    @field_validator("dataset")
    @classmethod
    def _one_dataset_source(cls, value: DatasetSpec) -> DatasetSpec:
        sources = [s for s in (value.path, value.ref, value.rows) if s is not None]
        if len(sources) != 1:
            raise ValueError("the dataset needs exactly one of `path`, `ref` or `rows`")
        return value

    def request_params(self, model: ModelSpec) -> dict[str, Any]:
        """The request's parameters: the suite's, then the model's own on top."""
        return {**self.params, **model.params}

    def structure_digest(self) -> str:
        """What identifies this suite for resuming: its name and where its cases come from
        (models, prompts and params are part of each case's own key)."""
        dataset = self.dataset.model_dump(exclude={"limit"})
        return canonical_digest({"name": self.name, "dataset": dataset})


def load_suite(source: str | Path | Mapping[str, Any]) -> SuiteSpec:
    """A suite from a YAML/JSON file or a dict; a mistake is an InvalidRequestError naming the
    field (`suite.yaml: prompts.1.template: ...`)."""
    where = "suite"
    if isinstance(source, Mapping):
        raw: Any = dict(source)
    else:
        path = Path(source).expanduser()
        where = str(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InvalidRequestError(f"cannot read suite {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise InvalidRequestError(f"{path}: not valid YAML: {exc}") from None
        if isinstance(raw, dict):
            raw.setdefault("base_dir", str(path.parent.resolve()))
    if not isinstance(raw, dict):
        raise InvalidRequestError(f"{where}: a suite is a mapping with name, models, prompts, ...")
    try:
        return SuiteSpec.model_validate(raw)
    except ValidationError as exc:
        raise InvalidRequestError(f"{where}: {_first_error(exc)}", param=_first_loc(exc)) from None


def _first_loc(exc: ValidationError) -> str:
    return ".".join(str(part) for part in exc.errors()[0]["loc"]) or "suite"


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{_first_loc(exc)}: {message}"


def canonical_digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- prompts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedPrompt:
    """A prompt ready to render: `version` is what a case's resume key records (the stored
    version, or the inline template's digest)."""

    label: str
    version: str
    digest: str
    variables: frozenset[str]
    render: Callable[[Mapping[str, Any]], list[dict[str, Any]]] = field(compare=False)


def inline_prompt(spec: PromptSpec) -> ResolvedPrompt:
    """An inline template rendered with Jinja2's sandbox; undefined variables are errors."""
    from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError, meta
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    environment = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    parts: list[tuple[str, str]] = (
        [("user", spec.template)]
        if spec.template is not None
        else [(m["role"], m["content"]) for m in spec.messages or []]
    )
    label = spec.label()
    try:
        templates = [(role, environment.from_string(text)) for role, text in parts]
        variables: set[str] = set()
        for _, text in parts:
            variables |= meta.find_undeclared_variables(environment.parse(text))
    except TemplateSyntaxError as exc:
        raise InvalidRequestError(
            f"prompt {label!r}: template error on line {exc.lineno}: {exc.message}",
            param="prompts",
        ) from None

    def render(row: Mapping[str, Any]) -> list[dict[str, Any]]:
        try:
            return [{"role": role, "content": t.render(**row)} for role, t in templates]
        except UndefinedError as exc:
            raise InvalidRequestError(f"prompt {label!r}: {exc.message}") from None

    digest = canonical_digest(parts)
    return ResolvedPrompt(label, f"sha256:{digest[:16]}", digest, frozenset(variables), render)


# -- datasets ------------------------------------------------------------------------------


def read_dataset_file(path: Path) -> list[dict[str, Any]]:
    """Rows from a JSONL, JSON (a list of objects) or CSV file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidRequestError(
            f"cannot read dataset {path}: {exc.strerror}", param="dataset.path"
        ) from None
    suffix = path.suffix.lower()
    rows: list[Any]
    if suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
    elif suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidRequestError(f"{path}: not valid JSON: {exc}") from None
        if not isinstance(rows, list):
            raise InvalidRequestError(f"{path}: a JSON dataset is a list of objects")
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise InvalidRequestError(f"{path}: line {number} is not JSON: {exc}") from None
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise InvalidRequestError(f"{path}: row {number} is not an object")
    return rows


def check_rows(
    rows: list[dict[str, Any]], prompts: list[ResolvedPrompt], *, expected: str | None
) -> None:
    """Every row has what every prompt needs (and the expected answer, when a scorer needs
    one): the first gap is reported by row number and field, before any call is made."""
    if not rows:
        raise InvalidRequestError("the dataset has no rows", param="dataset")
    for number, row in enumerate(rows, start=1):
        for prompt in prompts:
            missing = sorted(name for name in prompt.variables if name not in row)
            if missing:
                raise InvalidRequestError(
                    f"row {number} lacks field {missing[0]!r} (prompt {prompt.label!r} uses it)",
                    param="dataset",
                )
        if expected is not None and expected not in row:
            raise InvalidRequestError(
                f"row {number} lacks field {expected!r} (the expected answer the scorers need)",
                param="dataset.expected",
            )
