"""Reference metrics (BLEU, ROUGE-L), corpus-level classification figures, and latency and
cost thresholds. sacrebleu and rouge-score are imported when a scorer is built, not before."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from pydantic import Field

from keel.evals.scoring.base import Score, ScoreInput, ScorerBase, mean_aggregate
from keel.evals.scoring.text import Options, expected_texts

__all__ = ["Bleu", "Classification", "CostThreshold", "LatencyThreshold", "RougeL"]


class Bleu(ScorerBase):
    """Sentence BLEU per case (0 to 100, sacrebleu's scale); the headline is corpus BLEU,
    which is not the mean of sentence scores."""

    name = "bleu"
    needs_expected = True

    def __init__(self, options: Options) -> None:
        super().__init__(options.name)
        import sacrebleu

        self._sacrebleu = sacrebleu

    async def score(self, case: ScoreInput) -> Score:
        references = expected_texts(case, self.name)
        result = self._sacrebleu.sentence_bleu(case.output, references)
        return Score(float(result.score))

    def aggregate(self, scores: list[Score], cases: list[ScoreInput]) -> dict[str, float]:
        figures = mean_aggregate(scores)
        if cases:
            references = [expected_texts(case, self.name) for case in cases]
            # sacrebleu wants one stream per reference position; pad ragged lists with "".
            width = max(len(refs) for refs in references)
            streams = [
                [refs[i] if i < len(refs) else "" for refs in references] for i in range(width)
            ]
            corpus = self._sacrebleu.corpus_bleu([case.output for case in cases], streams)
            figures["score"] = figures["corpus_bleu"] = float(corpus.score)
        return figures


class RougeOptions(Options):
    stemmer: bool = False


class RougeL(ScorerBase):
    """ROUGE-L F-measure (0 to 1): the longest common subsequence of words, as precision
    (over the output) and recall (over the reference). The best over several references."""

    name = "rouge_l"
    needs_expected = True

    def __init__(self, options: RougeOptions) -> None:
        super().__init__(options.name)
        from rouge_score import rouge_scorer

        self._scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=options.stemmer)

    async def score(self, case: ScoreInput) -> Score:
        best = None
        for reference in expected_texts(case, self.name):
            result = self._scorer.score(reference, case.output)["rougeL"]
            if best is None or result.fmeasure > best.fmeasure:
                best = result
        assert best is not None
        return Score(
            float(best.fmeasure), detail=f"precision {best.precision:.4f}, recall {best.recall:.4f}"
        )


class ClassificationOptions(Options):
    # macro: the mean of each label's figures; micro: over all decisions; with `positive`,
    # the figures of that one label (binary classification).
    average: str = Field(default="macro", pattern="^(macro|micro)$")
    positive: str | None = None
    case_sensitive: bool = False


class Classification(ScorerBase):
    """Per case, 1 when the predicted label equals the expected one; over the corpus,
    precision, recall and F1 (`score` is F1) and accuracy."""

    name = "classification"
    needs_expected = True

    def __init__(self, options: ClassificationOptions) -> None:
        super().__init__(options.name)
        self.options = options

    def _label(self, value: Any) -> str:
        text = (value if isinstance(value, str) else str(value)).strip()
        return text if self.options.case_sensitive else text.casefold()

    async def score(self, case: ScoreInput) -> Score:
        predicted = self._label(case.output)
        expected = self._label(expected_texts(case, self.name)[0])
        return Score(1.0 if predicted == expected else 0.0, predicted == expected)

    def aggregate(self, scores: list[Score], cases: list[ScoreInput]) -> dict[str, float]:
        pairs = [
            (self._label(c.output), self._label(expected_texts(c, self.name)[0])) for c in cases
        ]
        true_pos: Counter[str] = Counter()
        false_pos: Counter[str] = Counter()
        false_neg: Counter[str] = Counter()
        for predicted, expected in pairs:
            if predicted == expected:
                true_pos[expected] += 1
            else:
                false_pos[predicted] += 1
                false_neg[expected] += 1
        accuracy = sum(true_pos.values()) / len(pairs) if pairs else 0.0
        if self.options.positive is not None:
            labels = [self._label(self.options.positive)]
        else:
            labels = sorted({label for pair in pairs for label in pair})
        if self.options.average == "micro" and self.options.positive is None:
            tp, fp, fn = sum(true_pos.values()), sum(false_pos.values()), sum(false_neg.values())
            precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
            f1 = _f1(precision, recall)
        else:
            per_label = []
            for label in labels:
                tp, fp, fn = true_pos[label], false_pos[label], false_neg[label]
                p, r = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
                per_label.append((p, r, _f1(p, r)))
            count = len(per_label) or 1
            precision = sum(p for p, _, _ in per_label) / count
            recall = sum(r for _, r, _ in per_label) / count
            f1 = sum(f for _, _, f in per_label) / count
        return {
            "score": f1,
            "f1": f1,
            "precision": precision,
            "recall": recall,
            "accuracy": accuracy,
            "mean": accuracy,
            "count": float(len(pairs)),
        }


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


class LatencyOptions(Options):
    max_s: float = Field(gt=0, allow_inf_nan=False)


class CostOptions(Options):
    max_usd: float = Field(ge=0, allow_inf_nan=False)


class _Threshold(ScorerBase):
    """The measurement is the value; passing means at most the threshold. The headline is
    the pass rate; a case without the measurement fails."""

    unit = ""

    def __init__(self, name: str | None, limit: float) -> None:
        super().__init__(name)
        self.limit = limit

    def measure(self, case: ScoreInput) -> float | None:
        raise NotImplementedError

    async def score(self, case: ScoreInput) -> Score:
        value = self.measure(case)
        if value is None:
            return Score(0.0, False, f"no {self.name} was recorded")
        return Score(value, value <= self.limit, f"{value:g}{self.unit} (limit {self.limit:g})")

    def aggregate(self, scores: list[Score], cases: list[ScoreInput]) -> dict[str, float]:
        figures = mean_aggregate(scores)
        figures["score"] = figures.get("pass_rate", 0.0)
        measured = [m for m in (self.measure(case) for case in cases) if m is not None]
        if measured:
            figures["mean"] = statistics.fmean(measured)
            figures["median"] = statistics.median(measured)
            figures["max"] = max(measured)
        return figures


class LatencyThreshold(_Threshold):
    name = "latency"
    unit = "s"

    def __init__(self, options: LatencyOptions) -> None:
        super().__init__(options.name, options.max_s)

    def measure(self, case: ScoreInput) -> float | None:
        return case.latency_s


class CostThreshold(_Threshold):
    name = "cost"
    unit = " USD"

    def __init__(self, options: CostOptions) -> None:
        super().__init__(options.name, options.max_usd)

    def measure(self, case: ScoreInput) -> float | None:
        return case.cost_usd
