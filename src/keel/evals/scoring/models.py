"""Scorers that call a model: an LLM judge with a rubric, and embedding similarity. The model
is reached through callables the caller supplies (the gateway on a server, the SDK elsewhere)."""

from __future__ import annotations

import json
import math
import re

from pydantic import Field, model_validator

from keel.errors import InvalidRequestError
from keel.evals.scoring.base import ChatFn, EmbedFn, Score, ScoreInput, ScorerBase
from keel.evals.scoring.text import Options, expected_texts

__all__ = ["EmbeddingSimilarity", "LlmJudge", "parse_judge_score"]

_JUDGE_SYSTEM = (
    "You are a strict evaluator. Grade the answer against the rubric. Reply with one line "
    "'Score: N' where N is a whole number from {low} to {high}, then at most one sentence of "
    "reasons."
)


class JudgeOptions(Options):
    model: str = Field(min_length=1, max_length=255)
    rubric: str = Field(min_length=1, max_length=20_000)
    min_score: int = 1
    max_score: int = 10
    # On the normalized 0..1 scale: a case passes at or above it.
    threshold: float | None = Field(default=None, ge=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> JudgeOptions:
        if self.max_score <= self.min_score:
            raise ValueError("max_score must be greater than min_score")
        return self


# Most specific first: "Score: 7", "7/10", "7 out of 10", "rating of 7", then any number.
_LABELLED = re.compile(r"(?:score|rating|grade)\s*(?:is|of|=|:)?\s*\**\s*(-?\d+(?:\.\d+)?)", re.I)
_FRACTION = re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:/|out of)\s*(\d+(?:\.\d+)?)", re.I)
_ANY = re.compile(r"-?\d+(?:\.\d+)?")


def parse_judge_score(answer: str, low: float, high: float) -> float | None:
    """The judge's score in [low, high], read robustly from free text; None when it gave none.

    A fraction whose denominator is not `high` ("4/5" on a 1-10 scale) is rescaled."""
    for match in _LABELLED.finditer(answer):
        value = float(match.group(1))
        if low <= value <= high:
            return value
    for match in _FRACTION.finditer(answer):
        value, scale = float(match.group(1)), float(match.group(2))
        if scale == high and low <= value <= high:
            return value
        if scale > 0 and 0 <= value <= scale:
            return low + (high - low) * value / scale
    for match in _ANY.finditer(answer):
        value = float(match.group())
        if low <= value <= high:
            return value
    return None


class LlmJudge(ScorerBase):
    """A model grades each answer against a rubric; the value is the grade on a 0..1 scale
    (`min_score` → 0, `max_score` → 1). An answer with no readable grade scores 0 and says so."""

    name = "llm_judge"

    def __init__(self, options: JudgeOptions, chat: ChatFn | None) -> None:
        super().__init__(options.name)
        if chat is None:
            raise InvalidRequestError(
                "the llm_judge scorer needs a chat function to reach its judge model",
                param="model",
            )
        self.options = options
        self.chat = chat

    def messages(self, case: ScoreInput) -> list[dict[str, str]]:
        low, high = self.options.min_score, self.options.max_score
        parts = [f"Rubric:\n{self.options.rubric}"]
        if case.inputs:
            parts.append(f"Input:\n{json.dumps(case.inputs, ensure_ascii=False, default=str)}")
        if case.expected is not None:
            parts.append(f"Reference answer:\n{expected_texts(case, self.name)[0]}")
        parts.append(f"Answer to grade:\n{case.output}")
        parts.append(f"Score from {low} to {high}:")
        return [
            {"role": "system", "content": _JUDGE_SYSTEM.format(low=low, high=high)},
            {"role": "user", "content": "\n\n".join(parts)},
        ]

    async def score(self, case: ScoreInput) -> Score:
        low, high = self.options.min_score, self.options.max_score
        answer = await self.chat(self.options.model, self.messages(case))
        grade = parse_judge_score(answer, low, high)
        if grade is None:
            passed = False if self.options.threshold is not None else None
            return Score(0.0, passed, f"the judge gave no score: {answer[:200]!r}")
        value = (grade - low) / (high - low)
        passed = None if self.options.threshold is None else value >= self.options.threshold
        return Score(value, passed, f"{grade:g}/{high}: {answer.strip()[:300]}")


class EmbeddingOptions(Options):
    model: str = Field(default="all-minilm-l6-v2", min_length=1, max_length=255)
    threshold: float | None = Field(default=None, ge=-1, le=1)


class EmbeddingSimilarity(ScorerBase):
    """Cosine similarity of the output's and the expected text's embeddings (the best over
    several expected texts)."""

    name = "embedding_similarity"
    needs_expected = True

    def __init__(self, options: EmbeddingOptions, embed: EmbedFn | None) -> None:
        super().__init__(options.name)
        if embed is None:
            raise InvalidRequestError(
                "the embedding_similarity scorer needs an embed function to reach its model",
                param="model",
            )
        self.options = options
        self.embed = embed

    async def score(self, case: ScoreInput) -> Score:
        references = expected_texts(case, self.name)
        vectors = await self.embed(self.options.model, [case.output, *references])
        best = max(cosine(vectors[0], other) for other in vectors[1:])
        passed = None if self.options.threshold is None else best >= self.options.threshold
        return Score(best, passed)


def cosine(left: list[float], right: list[float]) -> float:
    dot = sum(a * b for a, b in zip(left, right, strict=True))
    norms = math.sqrt(sum(a * a for a in left)) * math.sqrt(sum(b * b for b in right))
    return dot / norms if norms else 0.0
