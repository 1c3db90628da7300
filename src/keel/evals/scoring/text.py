"""Scorers that compare text: exact match, substring, regex, JSON validity and schema, numbers."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from keel.errors import InvalidRequestError
from keel.evals.scoring.base import Score, ScoreInput, ScorerBase

__all__ = [
    "Contains",
    "ExactMatch",
    "JsonSchemaMatch",
    "JsonValid",
    "NumericTolerance",
    "Options",
    "RegexMatch",
]


class Options(BaseModel):
    """Every scorer's options; unknown keys are refused so a typo can't silently do nothing."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)


def expected_texts(case: ScoreInput, scorer: str) -> list[str]:
    """`expected` as one or more acceptable answers (a list means any of them)."""
    if case.expected is None:
        raise InvalidRequestError(f"the {scorer} scorer needs an expected value", param="expected")
    values = case.expected if isinstance(case.expected, list) else [case.expected]
    return [value if isinstance(value, str) else json.dumps(value) for value in values]


def _passed(matched: bool, detail: str | None = None) -> Score:
    return Score(1.0 if matched else 0.0, matched, detail)


class ExactMatchOptions(Options):
    case_sensitive: bool = True
    strip: bool = True


class ExactMatch(ScorerBase):
    """1 when the output equals the expected text (or one of a list of them)."""

    name = "exact_match"
    needs_expected = True

    def __init__(self, options: ExactMatchOptions) -> None:
        super().__init__(options.name)
        self.options = options

    def _normal(self, text: str) -> str:
        text = text.strip() if self.options.strip else text
        return text if self.options.case_sensitive else text.casefold()

    async def score(self, case: ScoreInput) -> Score:
        output = self._normal(case.output)
        return _passed(any(output == self._normal(t) for t in expected_texts(case, self.name)))


class ContainsOptions(Options):
    # The text to look for; without it, the case's expected value (or values: any of them).
    value: str | None = Field(default=None, min_length=1)


class Contains(ScorerBase):
    """1 when the output contains the text; `icontains` ignores case."""

    def __init__(self, options: ContainsOptions, *, ignore_case: bool) -> None:
        self.name = "icontains" if ignore_case else "contains"
        super().__init__(options.name)
        self.value = options.value
        self.ignore_case = ignore_case
        self.needs_expected = options.value is None

    async def score(self, case: ScoreInput) -> Score:
        needles = [self.value] if self.value is not None else expected_texts(case, self.name)
        output = case.output.casefold() if self.ignore_case else case.output
        found = any((n.casefold() if self.ignore_case else n) in output for n in needles)
        return _passed(found)


class RegexOptions(Options):
    pattern: str = Field(min_length=1, max_length=2000)
    ignore_case: bool = False
    # search: anywhere in the output; fullmatch: the whole (stripped) output.
    mode: str = Field(default="search", pattern="^(search|fullmatch)$")


class RegexMatch(ScorerBase):
    name = "regex"

    def __init__(self, options: RegexOptions) -> None:
        super().__init__(options.name)
        try:
            self.pattern = re.compile(options.pattern, re.IGNORECASE if options.ignore_case else 0)
        except re.error as exc:
            raise InvalidRequestError(
                f"regex scorer: invalid pattern {options.pattern!r}: {exc}", param="pattern"
            ) from None
        self.fullmatch = options.mode == "fullmatch"

    async def score(self, case: ScoreInput) -> Score:
        if self.fullmatch:
            return _passed(self.pattern.fullmatch(case.output.strip()) is not None)
        return _passed(self.pattern.search(case.output) is not None)


def parse_json(text: str) -> tuple[Any, str | None]:
    """The JSON value in `text`, or the reason it is not JSON."""
    try:
        return json.loads(text), None
    except ValueError as exc:
        return None, f"not JSON: {exc}"


class JsonValid(ScorerBase):
    name = "json_valid"

    def __init__(self, options: Options) -> None:
        super().__init__(options.name)

    async def score(self, case: ScoreInput) -> Score:
        _, problem = parse_json(case.output)
        return _passed(problem is None, problem)


class JsonSchemaOptions(Options):
    json_schema: dict[str, Any] = Field(alias="schema")


class JsonSchemaMatch(ScorerBase):
    """1 when the output is JSON that the schema accepts; the first violation is the detail."""

    name = "json_schema"

    def __init__(self, options: JsonSchemaOptions) -> None:
        super().__init__(options.name)
        from jsonschema import exceptions, validators

        cls = validators.validator_for(options.json_schema)
        try:
            cls.check_schema(options.json_schema)
        except exceptions.SchemaError as exc:
            raise InvalidRequestError(
                f"json_schema scorer: invalid schema: {exc.message}", param="schema"
            ) from None
        self.validator = cls(options.json_schema)

    async def score(self, case: ScoreInput) -> Score:
        value, problem = parse_json(case.output)
        if problem is not None:
            return _passed(False, problem)
        error = next(iter(self.validator.iter_errors(value)), None)
        if error is None:
            return _passed(True)
        where = "/".join(str(part) for part in error.absolute_path) or "(root)"
        return _passed(False, f"{where}: {error.message}")


_NUMBER = re.compile(r"[-+]?(?:\d+(?:[.,]\d+)*(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?")


def first_number(text: str) -> float | None:
    """The number `text` is, or else the first number in it ("about 42.5 km" is 42.5)."""
    try:
        value = float(text.strip())
    except ValueError:
        match = _NUMBER.search(text)
        if match is None:
            return None
        try:
            value = float(match.group().replace(",", ""))
        except ValueError:
            return None
    return value if math.isfinite(value) else None


class NumericOptions(Options):
    tolerance: float = Field(default=0.0, ge=0, allow_inf_nan=False)  # absolute
    relative_tolerance: float = Field(default=0.0, ge=0, allow_inf_nan=False)


class NumericTolerance(ScorerBase):
    """1 when the output's number is within `tolerance` (absolute) or `relative_tolerance`
    (a fraction of the expected value) of the expected number."""

    name = "numeric"
    needs_expected = True

    def __init__(self, options: NumericOptions) -> None:
        super().__init__(options.name)
        self.options = options

    async def score(self, case: ScoreInput) -> Score:
        expected = case.expected
        target = (
            float(expected)
            if isinstance(expected, int | float) and not isinstance(expected, bool)
            else first_number(expected)
            if isinstance(expected, str)
            else None
        )
        if target is None:
            raise InvalidRequestError(
                f"the {self.name} scorer needs a number as the expected value, got {expected!r}",
                param="expected",
            )
        got = first_number(case.output)
        if got is None:
            return _passed(False, "the output holds no number")
        allowed = max(self.options.tolerance, self.options.relative_tolerance * abs(target))
        return _passed(abs(got - target) <= allowed, f"{got:g} vs {target:g}")
