"""The scorer contract: one case in, one `Score` out; a list of scores in, aggregate figures out.

Every aggregate carries `score`, the scorer's headline figure (a mean for most; corpus BLEU,
macro F1 or a pass rate where a mean would mislead), and `mean`; `pass_rate` when the scorer
decides pass or fail.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "ChatFn",
    "EmbedFn",
    "Score",
    "ScoreInput",
    "Scorer",
    "ScorerBase",
    "mean_aggregate",
]

# `chat(model, messages)` answers with the assistant's text; `embed(model, texts)` with one
# vector per text. The caller wires them to the gateway (server) or to the SDK (client side).
ChatFn = Callable[[str, list[dict[str, Any]]], Awaitable[str]]
EmbedFn = Callable[[str, list[str]], Awaitable[list[list[float]]]]


@dataclass(slots=True)
class ScoreInput:
    """One case: what the model answered, what was expected, what it was asked, what it cost."""

    output: str
    expected: Any = None
    inputs: dict[str, Any] = field(default_factory=dict)
    latency_s: float | None = None
    cost_usd: float | None = None


@dataclass(slots=True)
class Score:
    value: float
    passed: bool | None = None
    detail: str | None = None


@runtime_checkable
class Scorer(Protocol):
    name: str
    needs_expected: bool

    async def score(self, case: ScoreInput) -> Score: ...

    def aggregate(self, scores: list[Score], cases: list[ScoreInput]) -> dict[str, float]: ...


def mean_aggregate(scores: list[Score]) -> dict[str, float]:
    """The mean of the values as the headline, and the pass rate when cases pass or fail."""
    if not scores:
        return {"score": 0.0, "mean": 0.0, "count": 0.0}
    mean = sum(score.value for score in scores) / len(scores)
    figures = {"score": mean, "mean": mean, "count": float(len(scores))}
    decided = [score.passed for score in scores if score.passed is not None]
    if decided:
        figures["pass_rate"] = sum(1 for passed in decided if passed) / len(decided)
    return figures


class ScorerBase:
    """Shared plumbing: a name, whether `expected` is needed, and the mean aggregate."""

    name: str = "scorer"
    needs_expected: bool = False

    def __init__(self, name: str | None = None) -> None:
        if name is not None:
            self.name = name

    async def score(self, case: ScoreInput) -> Score:
        raise NotImplementedError

    def aggregate(self, scores: list[Score], cases: list[ScoreInput]) -> dict[str, float]:
        return mean_aggregate(scores)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
