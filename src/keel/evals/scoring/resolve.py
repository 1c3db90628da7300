"""`resolve_scorer(spec)`: a built-in scorer by type, a custom one by import path
(`package.module:function`) or by entry point (group `keel.scorers`)."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from keel.errors import InvalidRequestError
from keel.evals.scoring import metrics, models, text
from keel.evals.scoring.base import ChatFn, EmbedFn, Score, ScoreInput, Scorer, ScorerBase

__all__ = ["BUILTIN_SCORERS", "ENTRY_POINT_GROUP", "FunctionScorer", "resolve_scorer"]

ENTRY_POINT_GROUP = "keel.scorers"

_Factory = Callable[[Any, ChatFn | None, EmbedFn | None], Scorer]


class PythonOptions(text.Options):
    function: str = Field(min_length=3, max_length=500)
    needs_expected: bool = False


# type → (options model, factory, one-line description)
BUILTIN_SCORERS: dict[str, tuple[type[BaseModel], _Factory, str]] = {
    "exact_match": (
        text.ExactMatchOptions,
        lambda o, c, e: text.ExactMatch(o),
        "1 when the output equals the expected text",
    ),
    "contains": (
        text.ContainsOptions,
        lambda o, c, e: text.Contains(o, ignore_case=False),
        "1 when the output contains `value` (or the expected text)",
    ),
    "icontains": (
        text.ContainsOptions,
        lambda o, c, e: text.Contains(o, ignore_case=True),
        "contains, ignoring case",
    ),
    "regex": (
        text.RegexOptions,
        lambda o, c, e: text.RegexMatch(o),
        "1 when `pattern` matches the output",
    ),
    "json_valid": (text.Options, lambda o, c, e: text.JsonValid(o), "1 when the output is JSON"),
    "json_schema": (
        text.JsonSchemaOptions,
        lambda o, c, e: text.JsonSchemaMatch(o),
        "1 when the output is JSON that `schema` accepts",
    ),
    "numeric": (
        text.NumericOptions,
        lambda o, c, e: text.NumericTolerance(o),
        "1 when the output's number is within `tolerance` of the expected one",
    ),
    "bleu": (text.Options, lambda o, c, e: metrics.Bleu(o), "BLEU 0-100; headline corpus BLEU"),
    "rouge_l": (
        metrics.RougeOptions,
        lambda o, c, e: metrics.RougeL(o),
        "ROUGE-L F-measure 0-1",
    ),
    "classification": (
        metrics.ClassificationOptions,
        lambda o, c, e: metrics.Classification(o),
        "label accuracy per case; corpus precision, recall and F1",
    ),
    "latency": (
        metrics.LatencyOptions,
        lambda o, c, e: metrics.LatencyThreshold(o),
        "passes when latency_s is at most `max_s`",
    ),
    "cost": (
        metrics.CostOptions,
        lambda o, c, e: metrics.CostThreshold(o),
        "passes when cost_usd is at most `max_usd`",
    ),
    "embedding_similarity": (
        models.EmbeddingOptions,
        lambda o, c, e: models.EmbeddingSimilarity(o, e),
        "cosine similarity of output and expected embeddings",
    ),
    "llm_judge": (
        models.JudgeOptions,
        lambda o, c, e: models.LlmJudge(o, c),
        "a model grades the output against `rubric`, normalized to 0-1",
    ),
}


class FunctionScorer(ScorerBase):
    """A plain function as a scorer: it takes the `ScoreInput` and returns a float, a bool or a
    `Score` (or an awaitable of one)."""

    def __init__(self, function: Callable[[ScoreInput], Any], name: str, needs_expected: bool):
        super().__init__(name)
        self.function = function
        self.needs_expected = needs_expected

    async def score(self, case: ScoreInput) -> Score:
        result = self.function(case)
        if inspect.isawaitable(result):
            result = await result
        return as_score(result, self.name)


def as_score(result: Any, name: str) -> Score:
    if isinstance(result, Score):
        return result
    if isinstance(result, bool):
        return Score(1.0 if result else 0.0, result)
    if isinstance(result, int | float):
        return Score(float(result))
    raise InvalidRequestError(
        f"scorer {name!r} returned {type(result).__name__}; a scorer function returns a float, "
        "a bool or a Score",
        param="function",
    )


def resolve_scorer(
    spec: str | dict[str, Any],
    *,
    chat: ChatFn | None = None,
    embed: EmbedFn | None = None,
    allow_import: bool = True,
) -> Scorer:
    """The scorer `spec` names: `"exact_match"`, `{"type": "regex", "pattern": ...}`,
    `"pkg.mod:fn"`, `{"type": "python", "function": "pkg.mod:fn"}`, or an entry point name.

    `allow_import=False` refuses import paths (a server must not import what a caller names);
    entry points, which whoever installed the server chose, still resolve."""
    if isinstance(spec, str):
        kind, options = spec, {}
    elif isinstance(spec, dict):
        options = dict(spec)
        kind = options.pop("type", None)
        if not isinstance(kind, str) or not kind:
            raise InvalidRequestError("a scorer spec needs a 'type'", param="type")
    else:
        raise InvalidRequestError(
            f"a scorer spec is a name or an object, not {type(spec).__name__}", param="scorer"
        )
    if ":" in kind and kind != "python":
        options = {"function": kind, **options}
        kind = "python"
    if kind == "python":
        if not allow_import:
            raise InvalidRequestError(
                "python scorers by import path run only where the scorer is resolved in-process "
                f"(the SDK or an eval suite); here, install it as a '{ENTRY_POINT_GROUP}' entry "
                "point",
                param="type",
                code="import_not_allowed",
            )
        parsed = _options(PythonOptions, options, kind)
        assert isinstance(parsed, PythonOptions)
        function = _import(parsed.function)
        return _custom(function, parsed.name or parsed.function, parsed.needs_expected)
    if kind in BUILTIN_SCORERS:
        model, factory, _ = BUILTIN_SCORERS[kind]
        return factory(_options(model, options, kind), chat, embed)
    found = entry_points(group=ENTRY_POINT_GROUP, name=kind)
    if found:
        loaded = next(iter(found)).load()
        named = _options(PythonOptions, {"function": kind, **options}, kind)
        assert isinstance(named, PythonOptions)
        return _custom(loaded, named.name or kind, named.needs_expected)
    known = ", ".join(sorted(BUILTIN_SCORERS))
    raise InvalidRequestError(
        f"unknown scorer {kind!r}; built in: {known}; or an import path 'package.module:function' "
        f"or a '{ENTRY_POINT_GROUP}' entry point",
        param="type",
        code="unknown_scorer",
    )


def _options(model: type[BaseModel], options: dict[str, Any], kind: str) -> BaseModel:
    try:
        return model.model_validate(options)
    except ValidationError as exc:
        # An unknown option first: a misspelt one also shows up as a missing required one.
        errors = sorted(exc.errors(), key=lambda error: error["type"] != "extra_forbidden")
        first = errors[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        message = "unknown option" if first["type"] == "extra_forbidden" else first["msg"]
        raise InvalidRequestError(
            f"{kind} scorer: {field or 'options'}: {message}", param=field
        ) from None


def _import(path: str) -> Any:
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise InvalidRequestError(
            f"scorer function {path!r} is not 'package.module:function'", param="function"
        )
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except ImportError as exc:
        raise InvalidRequestError(
            f"scorer function {path!r}: cannot import {module_name!r}: {exc}", param="function"
        ) from None
    except AttributeError:
        raise InvalidRequestError(
            f"scorer function {path!r}: {module_name!r} has no {attribute!r}", param="function"
        ) from None
    return target


def _custom(target: Any, name: str, needs_expected: bool) -> Scorer:
    """A loaded object as a scorer: a Scorer instance as is, a Scorer class instantiated, a
    function wrapped."""
    if inspect.isclass(target):
        target = target()
    if isinstance(target, Scorer):
        return target
    if callable(target):
        return FunctionScorer(target, name, needs_expected)
    raise InvalidRequestError(f"scorer {name!r} is neither a function nor a scorer", param="type")
