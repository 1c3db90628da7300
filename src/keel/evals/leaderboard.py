"""The leaderboard: one row per (model, prompt) with each scorer's headline figure and a
bootstrap confidence interval, latency percentiles, and tokens and cost per 1,000 requests."""

from __future__ import annotations

import csv
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from keel.errors import InvalidRequestError
from keel.evals.scorers import Score, ScoreInput, Scorer
from keel.evals.state import CaseRecord

__all__ = [
    "BOOTSTRAP_MIN_CASES",
    "Leaderboard",
    "LeaderboardRow",
    "ScorerFigure",
    "bootstrap_interval",
    "build_leaderboard",
    "parse_fail_under",
]

# Fewer cases than this and a resampled interval says more about the resampling than the model.
BOOTSTRAP_MIN_CASES = 10
_RESAMPLES = 1000
_CONFIDENCE = 0.95


@dataclass
class ScorerFigure:
    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    figures: dict[str, float] = field(default_factory=dict)


@dataclass
class LeaderboardRow:
    model: str
    prompt: str
    prompt_version: str
    cases: int
    errors: int
    scores: dict[str, ScorerFigure]
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    tokens_per_1k_requests: float | None
    cost_per_1k_requests_usd: float | None
    spent_usd: float = 0.0

    def flat(self, scorer_names: Sequence[str]) -> dict[str, Any]:
        row: dict[str, Any] = {
            "model": self.model,
            "prompt": self.prompt,
            "prompt_version": self.prompt_version,
            "cases": self.cases,
            "errors": self.errors,
        }
        for name in scorer_names:
            figure = self.scores.get(name)
            row[name] = None if figure is None else figure.value
            row[f"{name}_ci_low"] = None if figure is None else figure.ci_low
            row[f"{name}_ci_high"] = None if figure is None else figure.ci_high
        row["latency_p50_ms"] = self.latency_p50_ms
        row["latency_p95_ms"] = self.latency_p95_ms
        row["tokens_per_1k_requests"] = self.tokens_per_1k_requests
        row["cost_per_1k_requests_usd"] = self.cost_per_1k_requests_usd
        return row


@dataclass
class Leaderboard:
    rows: list[LeaderboardRow]
    scorer_names: list[str]
    title: str = "leaderboard"

    def to_dicts(self) -> list[dict[str, Any]]:
        return [row.flat(self.scorer_names) for row in self.rows]

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "scorers": self.scorer_names,
            "rows": [asdict(row) for row in self.rows],
        }

    def to_csv(self) -> str:
        buffer = io.StringIO()
        rows = self.to_dicts()
        columns = list(rows[0]) if rows else ["model", "prompt", *self.scorer_names]
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if value is None else value for key, value in row.items()})
        return buffer.getvalue()

    def write(self, path: str | Path) -> Path:
        """CSV for a `.csv` path, JSON for anything else."""
        target = Path(path).expanduser()
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.suffix.lower() == ".csv":
            target.write_text(self.to_csv(), encoding="utf-8")
        else:
            target.write_text(json.dumps(self.to_json(), indent=2), encoding="utf-8")
        return target

    def below(self, thresholds: Mapping[str, float]) -> list[str]:
        """Every (row, scorer) under its threshold, as sentences; [] when all pass."""
        for name in thresholds:
            if name not in self.scorer_names:
                raise InvalidRequestError(
                    f"--fail-under names scorer {name!r}; this suite's scorers are "
                    f"{', '.join(self.scorer_names)}",
                    param="fail_under",
                )
        failures = []
        for row in self.rows:
            for name, threshold in thresholds.items():
                figure = row.scores.get(name)
                if figure is None or figure.value < threshold:
                    got = "no score" if figure is None else f"{figure.value:.4f}"
                    failures.append(f"{row.model} / {row.prompt}: {name} {got} < {threshold}")
        return failures

    def _repr_html_(self) -> str:
        rows = self.to_dicts()
        headers = ["model", "prompt", "cases", "errors", *self.scorer_names]
        headers += ["p50 ms", "p95 ms", "tokens/1k req", "USD/1k req"]
        head = "".join(f"<th>{html.escape(name)}</th>" for name in headers)
        body = []
        for row, flat in zip(self.rows, rows, strict=True):
            cells = [row.model, row.prompt, str(row.cases), str(row.errors)]
            for name in self.scorer_names:
                figure = row.scores.get(name)
                cells.append(format_figure(figure))
            cells += [
                _fmt(flat["latency_p50_ms"], 1),
                _fmt(flat["latency_p95_ms"], 1),
                _fmt(flat["tokens_per_1k_requests"], 0),
                _fmt(flat["cost_per_1k_requests_usd"], 6),
            ]
            body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
        caption = f"<caption>{html.escape(self.title)}</caption>"
        return (
            f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        )


def format_figure(figure: ScorerFigure | None) -> str:
    if figure is None:
        return "—"
    text = f"{figure.value:.3f}"
    if figure.ci_low is not None and figure.ci_high is not None:
        text += f" [{figure.ci_low:.3f}, {figure.ci_high:.3f}]"
    return text


def _fmt(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def parse_fail_under(items: Sequence[str]) -> dict[str, float]:
    """`["exact_match=0.8"]` as {"exact_match": 0.8}; a malformed item names itself."""
    thresholds: dict[str, float] = {}
    for item in items:
        name, found, value = item.partition("=")
        try:
            threshold = float(value)
        except ValueError:
            threshold = math.nan
        if not found or not name.strip() or not math.isfinite(threshold):
            raise InvalidRequestError(
                f"--fail-under {item!r}: write it as SCORER=NUMBER, e.g. exact_match=0.8",
                param="fail_under",
            )
        thresholds[name.strip()] = threshold
    return thresholds


def bootstrap_interval(
    scorer: Scorer, scores: list[Score], cases: list[ScoreInput], *, seed: int = 0
) -> tuple[float, float] | None:
    """A 95% percentile-bootstrap interval of the scorer's headline figure, or None under
    BOOTSTRAP_MIN_CASES cases. A mean is resampled in one vectorized step; a corpus figure
    (BLEU, F1) by calling the scorer's own aggregate on each resample."""
    import numpy as np

    count = len(scores)
    if count < BOOTSTRAP_MIN_CASES:
        return None
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, count, size=(_RESAMPLES, count))
    headline = scorer.aggregate(scores, cases)
    values = np.array([score.value for score in scores], dtype=float)
    if math.isclose(headline.get("score", math.nan), float(values.mean()), abs_tol=1e-12):
        statistics = values[picks].mean(axis=1)
    else:
        statistics = np.array(
            [
                scorer.aggregate([scores[i] for i in pick], [cases[i] for i in pick])["score"]
                for pick in picks
            ]
        )
    tail = (1 - _CONFIDENCE) / 2 * 100
    low, high = np.percentile(statistics, [tail, 100 - tail])
    return float(low), float(high)


def build_leaderboard(
    records: list[CaseRecord],
    scorers: list[Scorer],
    *,
    pairs: list[tuple[str, str, str]],
    errors: Mapping[tuple[str, str], int],
    title: str = "leaderboard",
) -> Leaderboard:
    """Rows for each (model, prompt label, prompt version) in `pairs`, best first by the first
    scorer's headline figure."""
    import numpy as np

    by_pair: dict[tuple[str, str], list[CaseRecord]] = {}
    for record in records:
        by_pair.setdefault((record.model, record.prompt), []).append(record)
    rows = []
    for model, prompt, version in pairs:
        found = by_pair.get((model, prompt), [])
        cases = [
            ScoreInput(
                output=r.output,
                expected=r.expected,
                inputs=r.inputs,
                latency_s=r.latency_s,
                cost_usd=r.cost_usd,
            )
            for r in found
        ]
        figures: dict[str, ScorerFigure] = {}
        for scorer in scorers:
            scored = [
                (Score(**r.scores[scorer.name]), case)
                for r, case in zip(found, cases, strict=True)
                if scorer.name in r.scores
            ]
            if not scored:
                continue
            scores = [score for score, _ in scored]
            inputs = [case for _, case in scored]
            aggregate = scorer.aggregate(scores, inputs)
            interval = bootstrap_interval(scorer, scores, inputs)
            figures[scorer.name] = ScorerFigure(
                value=float(aggregate.get("score", 0.0)),
                ci_low=None if interval is None else interval[0],
                ci_high=None if interval is None else interval[1],
                figures={key: float(value) for key, value in aggregate.items()},
            )
        latencies = np.array([r.latency_s * 1000 for r in found], dtype=float)
        costs = [r.cost_usd for r in found if r.cost_usd is not None]
        tokens = [r.prompt_tokens + r.completion_tokens for r in found]
        rows.append(
            LeaderboardRow(
                model=model,
                prompt=prompt,
                prompt_version=version,
                cases=len(found),
                errors=errors.get((model, prompt), 0),
                scores=figures,
                latency_p50_ms=float(np.percentile(latencies, 50)) if found else None,
                latency_p95_ms=float(np.percentile(latencies, 95)) if found else None,
                tokens_per_1k_requests=1000 * sum(tokens) / len(tokens) if tokens else None,
                cost_per_1k_requests_usd=1000 * sum(costs) / len(costs) if costs else None,
                spent_usd=sum(costs),
            )
        )
    if scorers:
        first = scorers[0].name

        def rank(row: LeaderboardRow) -> float:
            figure = row.scores.get(first)
            return -figure.value if figure is not None else math.inf

        rows.sort(key=rank)
    return Leaderboard(rows, [scorer.name for scorer in scorers], title)
