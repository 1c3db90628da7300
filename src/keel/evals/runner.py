"""Running a suite: check everything, plan the cases, call the gateway with bounded
concurrency and retries, score, keep resume state, and stop cleanly at the budget.

    result = keel.evals.run_suite("suite.yaml", concurrency=8)   # embedded gateway
    result = keel.evals.run_suite(suite, url="http://keel:8080", api_key=sandbox_key)
    result.leaderboard                                           # renders in Jupyter
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keel.errors import InvalidRequestError
from keel.evals.client import CallFailed, Completion, EvalClient
from keel.evals.leaderboard import Leaderboard, build_leaderboard
from keel.evals.library import resolve_dataset, resolve_prompt
from keel.evals.scorers import ScoreInput, Scorer, resolve_scorer
from keel.evals.state import CaseRecord, ResumeState, case_key
from keel.evals.suite import Budget, ResolvedPrompt, SuiteSpec, check_rows

__all__ = ["CaseFailure", "EvalResult", "Ledger", "PlannedCase", "PreparedSuite", "prepare"]

ProgressFn = Callable[[int, int], None]
_BACKOFF_CAP_S = 10.0


@dataclass(frozen=True)
class PlannedCase:
    key: str
    case_id: str
    row_number: int
    model: str
    prompt: ResolvedPrompt
    params: dict[str, Any]
    row: dict[str, Any]
    expected: Any


@dataclass
class CaseFailure:
    case_id: str
    model: str
    prompt: str
    error: str


@dataclass
class PreparedSuite:
    """A suite checked against the gateway: its prompts, rows, scorers and planned cases."""

    suite: SuiteSpec
    digest: str
    prompts: list[ResolvedPrompt]
    rows: list[dict[str, Any]]
    dataset_id: str
    scorers: list[Scorer]
    cases: list[PlannedCase]

    def pairs(self) -> list[tuple[str, str, str]]:
        return [
            (model.id, prompt.label, prompt.version)
            for model in self.suite.models
            for prompt in self.prompts
        ]


@dataclass
class EvalResult:
    suite: SuiteSpec
    digest: str
    dataset_id: str
    leaderboard: Leaderboard
    records: list[CaseRecord]
    failures: list[CaseFailure]
    planned: int
    resumed: int
    new_calls: int
    spent_usd: float
    skipped: int
    stopped: str | None
    environment: str | None = None
    state_path: Path | None = None
    run_id: str | None = None
    registered: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.stopped is None and not self.failures and self.skipped == 0

    def _repr_html_(self) -> str:
        return self.leaderboard._repr_html_()


class Ledger:
    """What this invocation has spent, and whether the next call still fits the budget.

    A call is refused when the calls so far reach `max_calls`, or when the USD spent plus the
    average cost of a call for each one in flight and the next would pass `max_cost_usd`; calls
    already in flight finish (their answers are paid for), so a run can pass its USD budget by
    at most the calls in flight at the moment it is reached."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.calls = 0
        self.spent_usd = 0.0
        self._priced = 0
        self._in_flight = 0
        self.stopped: str | None = None

    def reserve(self) -> bool:
        if self.stopped is not None:
            return False
        limit_calls, limit_usd = self.budget.max_calls, self.budget.max_cost_usd
        if limit_calls is not None and self.calls >= limit_calls:
            self.stopped = f"budget reached: max_calls {limit_calls}"
            return False
        if limit_usd is not None:
            average = self.spent_usd / self._priced if self._priced else 0.0
            if self.spent_usd + average * (self._in_flight + 1) > limit_usd or (
                self.spent_usd >= limit_usd
            ):
                self.stopped = (
                    f"budget reached: max_cost_usd {limit_usd} (spent {self.spent_usd:.6f})"
                )
                return False
        self.calls += 1
        self._in_flight += 1
        return True

    def settle(self, cost_usd: float | None) -> None:
        self._in_flight -= 1
        self.add(cost_usd)

    def add(self, cost_usd: float | None) -> None:
        if cost_usd is not None:
            self.spent_usd += cost_usd
            self._priced += 1


async def call_with_retries(
    client: EvalClient,
    model: str,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    *,
    retries: int,
    ledger: Ledger | None = None,
) -> Completion:
    """One chat call; rate limits, gateway 5xx and lost connections are tried again with
    exponential backoff (honouring retry-after), each try counted against the budget."""
    attempt = 0
    while True:
        try:
            return await client.chat(model, messages, params)
        except CallFailed as failure:
            if not failure.retryable or attempt >= retries:
                raise
            wait = failure.retry_after_s or 0.25 * 2**attempt
            await asyncio.sleep(min(wait, _BACKOFF_CAP_S))
            attempt += 1
            if ledger is not None:
                ledger.calls += 1


async def prepare(
    suite: SuiteSpec,
    client: EvalClient,
    *,
    ledger: Ledger,
    models: list[str] | None = None,
    prompts: list[str] | None = None,
) -> PreparedSuite:
    """Everything that can be wrong, found before the first model call: prompts and dataset
    resolved, scorers known, models served, and every row holding what the prompts need."""
    suite = _narrowed(suite, models, prompts)
    resolved = [await resolve_prompt(spec, client) for spec in suite.prompts]
    rows, dataset_id = await resolve_dataset(suite.dataset, client, base_dir=suite.base_dir)
    scorers = _scorers(suite, client, ledger)
    served = await client.models()
    for model in suite.models:
        if model.id not in served:
            from keel.config import did_you_mean

            raise InvalidRequestError(
                f"model {model.id!r} is not served by this gateway{did_you_mean(model.id, served)}",
                param="models",
                code="model_not_found",
            )
    needs_expected = any(scorer.needs_expected for scorer in scorers)
    check_rows(rows, resolved, expected=suite.dataset.expected if needs_expected else None)
    digest = suite.structure_digest()
    cases = []
    for model in suite.models:
        params = suite.request_params(model)
        for prompt in resolved:
            for number, row in enumerate(rows, start=1):
                case_id = _case_id(row, number, suite.dataset.id)
                row_digest = hashlib.sha256(repr(sorted(row.items())).encode()).hexdigest()[:12]
                key = case_key(digest, f"{case_id}:{row_digest}", model.id, prompt.version, params)
                cases.append(
                    PlannedCase(
                        key=key,
                        case_id=case_id,
                        row_number=number,
                        model=model.id,
                        prompt=prompt,
                        params=params,
                        row=row,
                        expected=row.get(suite.dataset.expected),
                    )
                )
    return PreparedSuite(suite, digest, resolved, rows, dataset_id, scorers, cases)


def _narrowed(suite: SuiteSpec, models: list[str] | None, prompts: list[str] | None) -> SuiteSpec:
    update: dict[str, Any] = {}
    if models:
        known = {model.id for model in suite.models}
        for name in models:
            if name not in known:
                raise InvalidRequestError(f"--model {name!r} is not in the suite", param="models")
        update["models"] = [model for model in suite.models if model.id in models]
    if prompts:
        known = {prompt.label() for prompt in suite.prompts}
        for name in prompts:
            if name not in known:
                raise InvalidRequestError(f"--prompt {name!r} is not in the suite", param="prompts")
        update["prompts"] = [prompt for prompt in suite.prompts if prompt.label() in prompts]
    return suite.model_copy(update=update) if update else suite


def _case_id(row: Mapping[str, Any], number: int, column: str | None) -> str:
    if column is None:
        return str(number)
    if column not in row:
        raise InvalidRequestError(
            f"row {number} lacks field {column!r} (the dataset's case id)", param="dataset.id"
        )
    return str(row[column])


def _scorers(suite: SuiteSpec, client: EvalClient, ledger: Ledger) -> list[Scorer]:
    async def chat(model: str, messages: list[dict[str, Any]]) -> str:
        completion = await call_with_retries(
            client, model, messages, {}, retries=suite.retries, ledger=ledger
        )
        ledger.add(completion.cost_usd)
        return completion.output

    async def embed(model: str, texts: list[str]) -> list[list[float]]:
        body = await client.post("/v1/embeddings", {"model": model, "input": texts})
        return [item["embedding"] for item in body["data"]]

    scorers: list[Scorer] = []
    names: set[str] = set()
    for spec in suite.scorers:
        scorer = resolve_scorer(spec, chat=chat, embed=embed)
        if scorer.name in names:
            raise InvalidRequestError(
                f"two scorers are named {scorer.name!r}; give one a `name`", param="scorers"
            )
        names.add(scorer.name)
        scorers.append(scorer)
    return scorers


async def score_case(
    scorers: list[Scorer], record: CaseRecord
) -> tuple[dict[str, dict[str, Any]], str | None]:
    """The scores `record` lacks (a resumed case is re-scored only for scorers added since)."""
    case = ScoreInput(
        output=record.output,
        expected=record.expected,
        inputs=record.inputs,
        latency_s=record.latency_s,
        cost_usd=record.cost_usd,
    )
    scores = dict(record.scores)
    for scorer in scorers:
        if scorer.name in scores:
            continue
        try:
            score = await scorer.score(case)
        except (CallFailed, InvalidRequestError) as exc:
            return scores, f"scorer {scorer.name}: {exc}"
        if not math.isfinite(score.value):
            return scores, f"scorer {scorer.name}: not a finite score"
        scores[scorer.name] = {"value": score.value, "passed": score.passed, "detail": score.detail}
    return scores, None


async def execute(
    prepared: PreparedSuite,
    client: EvalClient,
    state: ResumeState,
    ledger: Ledger,
    *,
    concurrency: int,
    progress: ProgressFn | None = None,
    environment: str | None = None,
) -> tuple[list[CaseRecord], list[CaseFailure], int, int]:
    """Run every planned case not in `state`; returns (records in plan order, failures,
    resumed count, skipped count)."""
    suite = prepared.suite
    total = len(prepared.cases)
    finished: dict[str, CaseRecord] = {}
    failures: list[CaseFailure] = []
    pending: list[PlannedCase] = []
    resumed = 0
    for case in prepared.cases:
        record = state.get(case.key)
        if record is None:
            pending.append(case)
            continue
        resumed += 1
        scores, problem = await score_case(prepared.scorers, record)
        if scores != record.scores:
            record.scores = scores
            state.add(record)
        if problem:
            failures.append(CaseFailure(case.case_id, case.model, case.prompt.label, problem))
        finished[case.key] = record
    done = resumed
    if progress is not None:
        progress(done, total)
    queue: asyncio.Queue[PlannedCase] = asyncio.Queue()
    for case in pending:
        queue.put_nowait(case)
    skipped = 0

    async def worker() -> None:
        nonlocal done, skipped
        while True:
            try:
                case = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if not ledger.reserve():
                skipped += 1
                continue
            try:
                messages = case.prompt.render(case.row)
                completion = await call_with_retries(
                    client, case.model, messages, case.params, retries=suite.retries, ledger=ledger
                )
            except (CallFailed, InvalidRequestError) as exc:
                ledger.settle(None)
                failures.append(CaseFailure(case.case_id, case.model, case.prompt.label, str(exc)))
            else:
                ledger.settle(completion.cost_usd)
                record = CaseRecord(
                    key=case.key,
                    case_id=case.case_id,
                    model=case.model,
                    prompt=case.prompt.label,
                    prompt_version=case.prompt.version,
                    output=completion.output,
                    expected=case.expected,
                    latency_s=completion.latency_s,
                    cost_usd=completion.cost_usd,
                    prompt_tokens=completion.prompt_tokens,
                    completion_tokens=completion.completion_tokens,
                    request_id=completion.request_id,
                    environment=environment,
                    inputs=case.row,
                )
                record.scores, problem = await score_case(prepared.scorers, record)
                # Saved even when a scorer failed: the answer is paid for, and a re-run
                # only re-scores it.
                state.add(record)
                finished[case.key] = record
                if problem:
                    failures.append(
                        CaseFailure(case.case_id, case.model, case.prompt.label, problem)
                    )
            done += 1
            if progress is not None:
                progress(done, total)

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(pending) or 1)))))
    ordered = [finished[case.key] for case in prepared.cases if case.key in finished]
    return ordered, failures, resumed, skipped


def leaderboard_of(
    prepared: PreparedSuite, records: list[CaseRecord], failures: list[CaseFailure]
) -> Leaderboard:
    errors: dict[tuple[str, str], int] = {}
    for failure in failures:
        errors[(failure.model, failure.prompt)] = errors.get((failure.model, failure.prompt), 0) + 1
    return build_leaderboard(
        records,
        prepared.scorers,
        pairs=prepared.pairs(),
        errors=errors,
        title=prepared.suite.name,
    )
