"""One scorer API, used offline (eval suites) and online (monitoring).

    scorer = resolve_scorer({"type": "regex", "pattern": r"^\\d+$"})
    score = await scorer.score(ScoreInput(output="42"))
    figures = scorer.aggregate(scores, cases)   # {"score": ..., "mean": ..., ...}

Model-backed scorers (`llm_judge`, `embedding_similarity`) reach their model through the
`chat` and `embed` callables the caller passes to `resolve_scorer`.
"""

from __future__ import annotations

from keel.evals.scoring.base import (
    ChatFn,
    EmbedFn,
    Score,
    ScoreInput,
    Scorer,
    ScorerBase,
    mean_aggregate,
)
from keel.evals.scoring.models import parse_judge_score
from keel.evals.scoring.resolve import (
    BUILTIN_SCORERS,
    ENTRY_POINT_GROUP,
    FunctionScorer,
    resolve_scorer,
)

__all__ = [
    "BUILTIN_SCORERS",
    "ENTRY_POINT_GROUP",
    "ChatFn",
    "EmbedFn",
    "FunctionScorer",
    "Score",
    "ScoreInput",
    "Scorer",
    "ScorerBase",
    "mean_aggregate",
    "parse_judge_score",
    "resolve_scorer",
    "score_cases",
]


async def score_cases(
    scorer: Scorer, cases: list[ScoreInput]
) -> tuple[list[Score], dict[str, float]]:
    """Score every case in order, then aggregate them."""
    scores = [await scorer.score(case) for case in cases]
    return scores, scorer.aggregate(scores, cases)
