"""The scorer API with hand-computed expectations: every figure below is worked out in the
comment beside it, not taken from the code under test."""

from __future__ import annotations

import math
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from keel.errors import InvalidRequestError
from keel.evals.scorers import Score, ScoreInput, parse_judge_score, resolve_scorer, score_cases


async def one(spec: Any, output: str, expected: Any = None, **extra: Any) -> Score:
    return await resolve_scorer(spec).score(ScoreInput(output, expected, **extra))


async def test_exact_match_and_its_options() -> None:
    assert (await one("exact_match", " Paris\n", "Paris")).value == 1.0
    assert (await one("exact_match", "paris", "Paris")).passed is False
    assert (await one({"type": "exact_match", "case_sensitive": False}, "paris", "Paris")).passed
    # A list of expected answers: any of them.
    assert (await one("exact_match", "NYC", ["New York", "NYC"])).passed


async def test_contains_icontains_regex() -> None:
    assert (await one("contains", "The capital is Paris.", "Paris")).passed
    assert not (await one("contains", "The capital is paris.", "Paris")).passed
    assert (await one("icontains", "The capital is PARIS.", "paris")).passed
    assert (await one({"type": "contains", "value": "is"}, "this")).passed
    assert (await one({"type": "regex", "pattern": r"^\d{3}-\d{4}$"}, "555-1234")).passed
    assert not (await one({"type": "regex", "pattern": r"^\d+$"}, "12a")).passed
    case_blind = {"type": "regex", "pattern": "yes", "ignore_case": True}
    assert (await one(case_blind, "YES")).passed


async def test_json_validity_and_schema() -> None:
    assert (await one("json_valid", '{"a": 1}')).passed
    broken = await one("json_valid", "{'a': 1}")
    assert broken.passed is False
    assert broken.detail is not None and broken.detail.startswith("not JSON")
    schema = {
        "type": "object",
        "properties": {"age": {"type": "integer", "minimum": 0}},
        "required": ["age"],
    }
    spec = {"type": "json_schema", "schema": schema}
    assert (await one(spec, '{"age": 3}')).passed
    wrong = await one(spec, '{"age": -1}')
    assert wrong.passed is False
    assert wrong.detail is not None and wrong.detail.startswith("age:")
    assert not (await one(spec, "{}")).passed


async def test_numeric_tolerance() -> None:
    # |3.14 - 3.14159| = 0.00159 <= 0.01
    assert (await one({"type": "numeric", "tolerance": 0.01}, "about 3.14", 3.14159)).passed
    assert not (await one({"type": "numeric", "tolerance": 0.001}, "3.14", 3.14159)).passed
    # relative: 5% of 200 is 10; 209 is 9 away.
    assert (await one({"type": "numeric", "relative_tolerance": 0.05}, "209", "200")).passed
    assert not (await one("numeric", "no number here", 1)).passed


async def test_rouge_l_by_hand() -> None:
    # Reference "the cat is on the mat" (6 words), output "the cat sat on the mat" (6 words):
    # the longest common subsequence is "the cat on the mat", 5 words.
    # precision 5/6, recall 5/6, F = 5/6.
    score = await one("rouge_l", "the cat sat on the mat", "the cat is on the mat")
    assert score.value == pytest.approx(5 / 6)
    # Output "the cat" (2 words) against the same reference: LCS 2; P = 2/2, R = 2/6;
    # F = 2PR/(P+R) = 2 * 1 * (1/3) / (4/3) = 1/2.
    assert (await one("rouge_l", "the cat", "the cat is on the mat")).value == pytest.approx(0.5)


async def test_bleu_identical_is_100_and_disjoint_is_0() -> None:
    sentence = "the quick brown fox jumps over the lazy dog"
    assert (await one("bleu", sentence, sentence)).value == pytest.approx(100.0)
    assert (await one("bleu", "alpha beta gamma delta", sentence)).value == pytest.approx(0.0)
    scorer = resolve_scorer("bleu")
    cases = [ScoreInput(sentence, sentence), ScoreInput("a b c d e", "a b c d e")]
    _, figures = await score_cases(scorer, cases)
    assert figures["score"] == pytest.approx(100.0)  # corpus BLEU of exact copies


async def test_classification_f1_from_a_hand_confusion_matrix() -> None:
    # expected → predicted: cat→cat x3, cat→dog x1, dog→dog x2, dog→cat x2.
    pairs = [("cat", "cat")] * 3 + [("cat", "dog")] + [("dog", "dog")] * 2 + [("dog", "cat")] * 2
    cases = [ScoreInput(predicted, expected) for expected, predicted in pairs]
    # cat: TP 3, FP 2 (dog→cat), FN 1 → P 3/5, R 3/4, F1 = 2*(.6*.75)/(1.35) = 2/3
    # dog: TP 2, FP 1 (cat→dog), FN 2 → P 2/3, R 1/2, F1 = 2*(1/3)/(7/6) = 4/7
    _, macro = await score_cases(resolve_scorer("classification"), cases)
    assert macro["precision"] == pytest.approx((3 / 5 + 2 / 3) / 2)
    assert macro["recall"] == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert macro["f1"] == pytest.approx((2 / 3 + 4 / 7) / 2)
    assert macro["score"] == macro["f1"]
    assert macro["accuracy"] == pytest.approx(5 / 8)
    # micro: TP 5, FP 3, FN 3 → P = R = F1 = 5/8
    _, micro = await score_cases(
        resolve_scorer({"type": "classification", "average": "micro"}), cases
    )
    assert micro["f1"] == pytest.approx(5 / 8)
    # binary, positive "dog": P 2/3, R 1/2, F1 4/7
    binary = resolve_scorer({"type": "classification", "positive": "dog"})
    _, figures = await score_cases(binary, cases)
    assert (figures["precision"], figures["recall"]) == pytest.approx((2 / 3, 1 / 2))
    assert figures["f1"] == pytest.approx(4 / 7)


async def test_latency_and_cost_thresholds() -> None:
    scorer = resolve_scorer({"type": "latency", "max_s": 1.0})
    cases = [ScoreInput("a", latency_s=0.5), ScoreInput("b", latency_s=2.0), ScoreInput("c")]
    scores, figures = await score_cases(scorer, cases)
    assert [s.passed for s in scores] == [True, False, False]  # no latency recorded: fails
    assert figures["score"] == pytest.approx(1 / 3)
    assert figures["mean"] == pytest.approx(1.25)  # (0.5 + 2.0) / 2, over measured cases
    cost = resolve_scorer({"type": "cost", "max_usd": 0.01})
    assert (await cost.score(ScoreInput("x", cost_usd=0.002))).passed
    assert not (await cost.score(ScoreInput("x", cost_usd=0.02))).passed


async def test_embedding_similarity_with_an_embed_callable() -> None:
    vectors = {"cat": [1.0, 0.0], "kitten": [0.6, 0.8], "car": [0.0, 1.0]}

    async def embed(model: str, texts: list[str]) -> list[list[float]]:
        assert model == "all-minilm-l6-v2"
        return [vectors[text] for text in texts]

    scorer = resolve_scorer({"type": "embedding_similarity", "threshold": 0.5}, embed=embed)
    # cos(kitten, cat) = 0.6 / (1 * 1) = 0.6
    close = await scorer.score(ScoreInput("kitten", "cat"))
    assert close.value == pytest.approx(0.6) and close.passed
    far = await scorer.score(ScoreInput("car", "cat"))
    assert far.value == pytest.approx(0.0) and far.passed is False


async def test_llm_judge_reads_the_score_and_normalizes() -> None:
    asked: list[list[dict[str, Any]]] = []

    async def chat(model: str, messages: list[dict[str, Any]]) -> str:
        asked.append(messages)
        return "Score: 8\nClear and correct."

    spec = {"type": "llm_judge", "model": "judge", "rubric": "Is it correct?", "threshold": 0.7}
    scorer = resolve_scorer(spec, chat=chat)
    score = await scorer.score(ScoreInput("Paris", "Paris", inputs={"q": "Capital of France?"}))
    # 8 on 1..10 → (8 - 1) / (10 - 1) = 7/9
    assert score.value == pytest.approx(7 / 9)
    assert score.passed is True
    prompt = asked[0][1]["content"]
    assert "Is it correct?" in prompt and "Paris" in prompt and "Capital of France?" in prompt


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Score: 7", 7.0),
        ("**Rating:** 9 - great", 9.0),
        ("I'd give it 6/10.", 6.0),
        ("4 out of 5", 1 + 9 * 4 / 5),  # rescaled from a 5-point scale to 1..10: 8.2
        ("The answer deserves a 3.", 3.0),
        ("Step 1 of 2: it is fine. Score = 10", 10.0),
        ("no idea", None),
        ("42", None),  # out of range, nothing else
    ],
)
def test_judge_answers_are_parsed_robustly(answer: str, expected: float | None) -> None:
    found = parse_judge_score(answer, 1, 10)
    assert found == (pytest.approx(expected) if expected is not None else None)


async def test_a_judge_without_a_score_scores_zero_and_says_so() -> None:
    async def chat(model: str, messages: list[dict[str, Any]]) -> str:
        return "I cannot grade this."

    scorer = resolve_scorer({"type": "llm_judge", "model": "j", "rubric": "r"}, chat=chat)
    score = await scorer.score(ScoreInput("x"))
    assert score.value == 0.0
    assert score.detail is not None and "no score" in score.detail


def test_bad_specs_name_what_is_wrong() -> None:
    with pytest.raises(InvalidRequestError, match="unknown scorer 'nope'"):
        resolve_scorer("nope")
    with pytest.raises(InvalidRequestError, match="patern: unknown option") as info:
        resolve_scorer({"type": "regex", "patern": "x"})
    assert info.value.param == "patern"
    with pytest.raises(InvalidRequestError, match="invalid pattern"):
        resolve_scorer({"type": "regex", "pattern": "("})
    with pytest.raises(InvalidRequestError, match="invalid schema"):
        resolve_scorer({"type": "json_schema", "schema": {"type": "nonsense"}})
    with pytest.raises(InvalidRequestError, match="needs a chat function"):
        resolve_scorer({"type": "llm_judge", "model": "m", "rubric": "r"})
    with pytest.raises(InvalidRequestError, match="cannot import"):
        resolve_scorer("no_such_module_here:fn")
    with pytest.raises(InvalidRequestError, match="import path"):
        resolve_scorer("json:dumps", allow_import=False)


async def test_a_missing_expected_value_is_a_clear_error() -> None:
    with pytest.raises(InvalidRequestError, match="needs an expected value"):
        await one("exact_match", "x")


@pytest.fixture
def scorer_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "my_scorers.py").write_text(
        textwrap.dedent(
            """
            from keel.evals.scorers import Score

            def length_ok(case):
                return len(case.output) <= 5

            async def half(case):
                return 0.5

            def graded(case):
                return Score(0.25, False, "quarter")
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_scorers"
    sys.modules.pop("my_scorers", None)


async def test_python_scorers_by_import_path(scorer_module: str) -> None:
    short = await one(f"{scorer_module}:length_ok", "abc")
    assert (short.value, short.passed) == (1.0, True)
    assert (await one({"type": "python", "function": f"{scorer_module}:half"}, "x")).value == 0.5
    graded = await one(f"{scorer_module}:graded", "x")
    assert (graded.value, graded.detail) == (0.25, "quarter")
    named = resolve_scorer({"type": "python", "function": f"{scorer_module}:half", "name": "h"})
    assert named.name == "h"


async def test_python_scorers_by_entry_point(
    scorer_module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from importlib import metadata

    from keel.evals.scoring import resolve

    point = metadata.EntryPoint("short", f"{scorer_module}:length_ok", "keel.scorers")

    def entry_points(**selection: Any) -> metadata.EntryPoints:
        found = metadata.EntryPoints([point])
        return found.select(**selection)

    monkeypatch.setattr(resolve, "entry_points", entry_points)
    scorer = resolve_scorer("short", allow_import=False)
    assert scorer.name == "short"
    assert (await scorer.score(ScoreInput("toolongtext"))).passed is False


async def test_mean_aggregate_and_pass_rate() -> None:
    scorer = resolve_scorer("exact_match")
    cases = [ScoreInput("a", "a"), ScoreInput("b", "a"), ScoreInput("c", "c"), ScoreInput("d", "a")]
    _, figures = await score_cases(scorer, cases)
    assert figures["score"] == figures["mean"] == 0.5
    assert figures["pass_rate"] == 0.5
    assert math.isclose(figures["count"], 4)
