"""Budget-aware search over models x prompts x parameters: successive halving on growing
subsets of the dataset, the Pareto front of quality vs cost vs latency, and the configuration
chosen under a stated constraint ("cheapest with exact_match >= 0.85").

Every configuration first answers a few cases; the better part (1/eta) goes on to `eta` times
as many, and so on until the survivors have answered the whole dataset. A configuration's
answers are kept as it climbs, so each rung pays only for its new cases. With a constraint the
ranking is constraint-aware: configurations that meet it rank by the cost (or latency) to
minimize, ahead of those that don't, which rank by quality.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from keel.errors import InvalidRequestError
from keel.evals.client import CallFailed, EvalClient, connect
from keel.evals.runner import Ledger, PreparedSuite, call_with_retries, prepare
from keel.evals.suite import (
    Budget,
    DatasetSpec,
    ModelSpec,
    PromptSpec,
    ResolvedPrompt,
    SuiteSpec,
    check_rows,
    inline_prompt,
)

if TYPE_CHECKING:
    from keel.config import Settings

__all__ = ["SearchResult", "SearchSpec", "Trial", "load_search", "pareto_front", "run_search"]

ProgressFn = Callable[[int, int], None]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Strategy(_Strict):
    eta: int = Field(default=3, ge=2, le=10, description="Keep 1/eta at each rung.")
    min_cases: int = Field(default=2, ge=1, description="Cases at the first rung.")
    max_configs: int = Field(default=64, ge=1, description="Sampled when the grid is larger.")
    seed: int = 0


class Selection(_Strict):
    min_quality: float | None = None
    minimize: Literal["cost", "latency"] = "cost"


class PromptGeneration(_Strict):
    """Variants of each inline prompt, written by `model`."""

    model: str = Field(min_length=1)
    count: int = Field(default=1, ge=1, le=10)
    instruction: str = (
        "Rewrite the prompt template below so a language model answers more accurately. "
        "Keep every {{ placeholder }} exactly as written. Reply with the new template only."
    )


class SearchSpec(_Strict):
    name: str = Field(min_length=1, max_length=200)
    dataset: DatasetSpec
    scorers: list[str | dict[str, Any]] = Field(min_length=1)
    objective: str | None = Field(default=None, description="A scorer name (default: first).")
    models: list[str] = Field(min_length=1)
    prompts: list[PromptSpec] = Field(min_length=1)
    generate_prompts: PromptGeneration | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    budget: Budget = Field(default_factory=Budget)
    strategy: Strategy = Field(default_factory=Strategy)
    select: Selection = Field(default_factory=Selection)
    concurrency: int = Field(default=8, ge=1, le=256)
    retries: int = Field(default=2, ge=0, le=10)
    experiment: str | None = None
    base_dir: str | None = None

    @field_validator("prompts", mode="before")
    @classmethod
    def _prompt_shorthand(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"ref": item} if isinstance(item, str) else item for item in value]
        return value

    def grid(self) -> list[dict[str, Any]]:
        """Every parameter combination: a list is a set of choices, {min, max, steps} an even
        range, anything else a fixed value."""
        axes: list[tuple[str, list[Any]]] = []
        for name, value in self.params.items():
            if isinstance(value, list):
                if not value:
                    raise InvalidRequestError(f"params.{name}: no values", param=f"params.{name}")
                axes.append((name, value))
            elif isinstance(value, dict) and {"min", "max"} <= set(value):
                axes.append((name, _even_range(name, value)))
            else:
                axes.append((name, [value]))
        return [
            dict(zip([n for n, _ in axes], combo, strict=True))
            for combo in itertools.product(*(values for _, values in axes))
        ]


def _even_range(name: str, spec: Mapping[str, Any]) -> list[Any]:
    try:
        low, high, steps = float(spec["min"]), float(spec["max"]), int(spec.get("steps", 3))
    except (TypeError, ValueError):
        raise InvalidRequestError(
            f"params.{name}: min, max and steps must be numbers", param=f"params.{name}"
        ) from None
    if steps < 1 or high < low:
        raise InvalidRequestError(
            f"params.{name}: needs min <= max and steps >= 1", param=f"params.{name}"
        )
    values = [low + (high - low) * i / max(steps - 1, 1) for i in range(steps)]
    as_int = all(isinstance(spec[k], int) for k in ("min", "max"))
    return sorted({round(v) for v in values}) if as_int else [round(v, 6) for v in values]


def load_search(source: str | Path | Mapping[str, Any]) -> SearchSpec:
    where = "search"
    if isinstance(source, Mapping):
        raw: Any = dict(source)
    else:
        path = Path(source).expanduser()
        where = str(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InvalidRequestError(f"cannot read search spec {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise InvalidRequestError(f"{path}: not valid YAML: {exc}") from None
        if isinstance(raw, dict):
            raw.setdefault("base_dir", str(path.parent.resolve()))
    if not isinstance(raw, dict):
        raise InvalidRequestError(f"{where}: a search spec is a mapping")
    try:
        return SearchSpec.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        location = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        raise InvalidRequestError(f"{where}: {location}: {message}", param=location) from None


@dataclass
class _Answer:
    scores: dict[str, float]
    latency_s: float
    cost_usd: float | None


@dataclass
class Trial:
    """One configuration and what it measured on the cases it reached."""

    model: str
    prompt: ResolvedPrompt
    params: dict[str, Any]
    answers: dict[int, _Answer] = field(default_factory=dict)
    quality: float | None = None
    figures: dict[str, float] = field(default_factory=dict)
    latency_p50_ms: float | None = None
    cost_per_1k_requests_usd: float | None = None
    pareto: bool = False
    eliminated_at: int | None = None

    def label(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.model} / {self.prompt.label}" + (f" ({params})" if params else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "prompt": self.prompt.label,
            "prompt_version": self.prompt.version,
            "params": self.params,
            "cases": len(self.answers),
            "quality": self.quality,
            "figures": self.figures,
            "latency_p50_ms": self.latency_p50_ms,
            "cost_per_1k_requests_usd": self.cost_per_1k_requests_usd,
            "pareto": self.pareto,
            "eliminated_at_cases": self.eliminated_at,
        }


@dataclass
class SearchResult:
    name: str
    objective: str
    constraint: str
    trials: list[Trial]
    chosen: Trial | None
    calls: int
    grid_calls: int
    spent_usd: float
    stopped: str | None
    dataset_id: str
    notes: list[str] = field(default_factory=list)
    run_id: str | None = None
    registered: list[dict[str, Any]] = field(default_factory=list)

    def pareto(self) -> list[Trial]:
        return [trial for trial in self.trials if trial.pareto]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "objective": self.objective,
            "constraint": self.constraint,
            "chosen": None if self.chosen is None else self.chosen.to_json(),
            "calls": self.calls,
            "grid_calls": self.grid_calls,
            "spent_usd": self.spent_usd,
            "stopped": self.stopped,
            "dataset": self.dataset_id,
            "notes": self.notes,
            "run_id": self.run_id,
            "trials": [trial.to_json() for trial in self.trials],
        }

    def write(self, path: str | Path) -> Path:
        import csv
        import io
        import json

        target = Path(path).expanduser()
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.suffix.lower() != ".csv":
            target.write_text(json.dumps(self.to_json(), indent=2, default=str), "utf-8")
            return target
        buffer = io.StringIO()
        columns = ["model", "prompt", "params", "cases", "quality", "latency_p50_ms"]
        columns += ["cost_per_1k_requests_usd", "pareto", "chosen"]
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for trial in self.trials:
            row = {key: value for key, value in trial.to_json().items() if key in columns}
            row["params"] = json.dumps(trial.params, sort_keys=True)
            row["chosen"] = trial is self.chosen
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
        target.write_text(buffer.getvalue(), "utf-8")
        return target

    def _repr_html_(self) -> str:
        import html

        head = "".join(
            f"<th>{name}</th>"
            for name in (
                "",
                "model",
                "prompt",
                "params",
                "cases",
                self.objective,
                "p50 ms",
                "USD/1k req",
            )
        )
        body = []
        for trial in self.trials:
            cells = [
                "chosen" if trial is self.chosen else ("*" if trial.pareto else ""),
                trial.model,
                trial.prompt.label,
                ", ".join(f"{k}={v}" for k, v in sorted(trial.params.items())),
                str(len(trial.answers)),
                "—" if trial.quality is None else f"{trial.quality:.3f}",
                "—" if trial.latency_p50_ms is None else f"{trial.latency_p50_ms:.1f}",
                "—"
                if trial.cost_per_1k_requests_usd is None
                else f"{trial.cost_per_1k_requests_usd:.6f}",
            ]
            body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
        caption = html.escape(f"{self.name}: {self.constraint}")
        return (
            f"<table><caption>{caption}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>"
        )


def pareto_front(trials: list[Trial]) -> list[Trial]:
    """The trials no other beats on all of quality (higher), cost and latency (lower)."""

    def point(trial: Trial) -> tuple[float, float, float]:
        return (
            -(trial.quality if trial.quality is not None else -math.inf),
            trial.cost_per_1k_requests_usd or 0.0,
            trial.latency_p50_ms or 0.0,
        )

    measured = [trial for trial in trials if trial.quality is not None]
    front = []
    for trial in measured:
        mine = point(trial)
        dominated = any(
            all(o <= m for o, m in zip(point(other), mine, strict=True)) and point(other) != mine
            for other in measured
            if other is not trial
        )
        if not dominated:
            front.append(trial)
    return front


def run_search(
    spec: str | Path | Mapping[str, Any] | SearchSpec,
    *,
    url: str | None = None,
    api_key: str | None = None,
    settings: Settings | None = None,
    http: httpx.AsyncClient | None = None,
    save: bool = True,
    register: str | None = None,
    output: str | Path | None = None,
    progress: ProgressFn | None = None,
) -> SearchResult:
    """Run a search (a spec file, dict or SearchSpec) and return its result."""
    from keel.evals.api import resolve_url, run_blocking

    parsed = spec if isinstance(spec, SearchSpec) else load_search(spec)
    target = None if http is not None else resolve_url(url)
    key = api_key or os.environ.get("KEEL_API_KEY") or None
    return run_blocking(
        lambda: _search(parsed, target, key, settings, http, save, register, output, progress)
    )


async def _search(
    spec: SearchSpec,
    url: str | None,
    api_key: str | None,
    settings: Settings | None,
    http: httpx.AsyncClient | None,
    save: bool,
    register: str | None,
    output: str | Path | None,
    progress: ProgressFn | None,
) -> SearchResult:
    from keel.evals.publish import parse_model_version

    if register is not None:
        parse_model_version(register)
    grid = spec.grid()
    async with connect(url, api_key=api_key, settings=settings, http=http) as client:
        ledger = Ledger(spec.budget)
        suite = SuiteSpec(
            name=spec.name,
            models=[ModelSpec(id=model) for model in spec.models],
            prompts=spec.prompts,
            dataset=spec.dataset,
            scorers=spec.scorers,
            budget=spec.budget,
            base_dir=spec.base_dir,
        )
        prepared = await prepare(suite, client, ledger=ledger)
        objective = _objective(spec, prepared)
        prompts = list(prepared.prompts)
        notes: list[str] = []
        if spec.generate_prompts is not None:
            prompts += await _generated_prompts(spec, prepared, client, ledger, notes)
        configs = [
            Trial(model, prompt, params)
            for model in spec.models
            for prompt in prompts
            for params in grid
        ]
        grid_calls = len(configs) * len(prepared.rows)
        rng = random.Random(spec.strategy.seed)
        if len(configs) > spec.strategy.max_configs:
            configs = rng.sample(configs, spec.strategy.max_configs)
            notes.append(
                f"sampled {len(configs)} configurations of {grid_calls // len(prepared.rows)}"
            )
        order = list(range(len(prepared.rows)))
        rng.shuffle(order)
        await _halve(spec, prepared, client, ledger, configs, order, objective, progress)
        for trial in pareto_front(configs):
            trial.pareto = True
        chosen = _choose(spec, configs)
        result = SearchResult(
            name=spec.name,
            objective=objective,
            constraint=_constraint_text(spec, objective),
            trials=sorted(configs, key=lambda t: -(t.quality if t.quality is not None else -1)),
            chosen=chosen,
            calls=ledger.calls,
            grid_calls=grid_calls,
            spent_usd=ledger.spent_usd,
            stopped=ledger.stopped,
            dataset_id=prepared.dataset_id,
            notes=notes,
        )
        if save:
            try:
                result.run_id = await asyncio.to_thread(_save, spec, result, url, api_key, settings)
            except Exception as exc:  # the result is still returned and written
                result.notes.append(f"the run was not saved: {exc}")
        if register is not None and chosen is not None:
            result.registered = await _register(client, result, register)
    if output is not None:
        result.write(output)
    return result


def _objective(spec: SearchSpec, prepared: PreparedSuite) -> str:
    names = [scorer.name for scorer in prepared.scorers]
    objective = spec.objective or names[0]
    if objective not in names:
        raise InvalidRequestError(
            f"objective {objective!r} is not one of the scorers ({', '.join(names)})",
            param="objective",
        )
    return objective


def _constraint_text(spec: SearchSpec, objective: str) -> str:
    if spec.select.min_quality is None:
        return f"highest {objective}"
    return f"lowest {spec.select.minimize} with {objective} >= {spec.select.min_quality}"


async def _generated_prompts(
    spec: SearchSpec,
    prepared: PreparedSuite,
    client: EvalClient,
    ledger: Ledger,
    notes: list[str],
) -> list[ResolvedPrompt]:
    """Variants of each prompt, written by the generation model; a variant that drops or
    invents a placeholder is discarded (and said so)."""
    generation = spec.generate_prompts
    assert generation is not None
    variants: list[ResolvedPrompt] = []
    for base in prepared.prompts:
        sample = base.render({name: f"{{{{ {name} }}}}" for name in base.variables})
        text = "\n\n".join(message["content"] for message in sample)
        for number in range(1, generation.count + 1):
            if not ledger.reserve():
                notes.append(f"prompt generation stopped: {ledger.stopped}")
                return variants
            messages = [{"role": "user", "content": f"{generation.instruction}\n\n{text}"}]
            try:
                completion = await call_with_retries(
                    client,
                    generation.model,
                    messages,
                    {"temperature": 1.0},
                    retries=spec.retries,
                    ledger=ledger,
                )
            except CallFailed as exc:
                ledger.settle(None)
                notes.append(f"prompt generation failed: {exc}")
                continue
            ledger.settle(completion.cost_usd)
            label = f"{base.label}~gen{number}"
            try:
                variant = inline_prompt(PromptSpec(id=label, template=completion.output.strip()))
            except InvalidRequestError as exc:
                notes.append(f"{label} discarded: {exc.message}")
                continue
            if variant.variables != base.variables or not completion.output.strip():
                notes.append(f"{label} discarded: its placeholders differ from {base.label}'s")
                continue
            check_rows(prepared.rows, [variant], expected=None)
            variants.append(variant)
    return variants


async def _halve(
    spec: SearchSpec,
    prepared: PreparedSuite,
    client: EvalClient,
    ledger: Ledger,
    configs: list[Trial],
    order: list[int],
    objective: str,
    progress: ProgressFn | None,
) -> None:
    total_rows = len(order)
    size = min(spec.strategy.min_cases, total_rows)
    alive = list(configs)
    counts = [0, 0]  # answered, planned
    semaphore = asyncio.Semaphore(spec.concurrency)

    async def answer(trial: Trial, row: int) -> None:
        async with semaphore:
            if ledger.reserve():
                await _answer(spec, prepared, client, ledger, trial, row)
            counts[0] += 1
            if progress is not None:
                progress(counts[0], counts[1])

    while True:
        todo = [(trial, row) for trial in alive for row in order[:size] if row not in trial.answers]
        counts[1] += len(todo)
        await asyncio.gather(*(answer(trial, row) for trial, row in todo))
        for trial in configs:
            _measure(trial, prepared, objective)
        if ledger.stopped is not None or size >= total_rows:
            return
        alive.sort(key=lambda trial: _rank(spec, trial))
        keep = max(1, math.ceil(len(alive) / spec.strategy.eta))
        for trial in alive[keep:]:
            trial.eliminated_at = size
        alive = alive[:keep]
        size = min(size * spec.strategy.eta, total_rows)


async def _answer(
    spec: SearchSpec,
    prepared: PreparedSuite,
    client: EvalClient,
    ledger: Ledger,
    trial: Trial,
    row_index: int,
) -> None:
    from keel.evals.scorers import ScoreInput

    row = prepared.rows[row_index]
    try:
        completion = await call_with_retries(
            client,
            trial.model,
            trial.prompt.render(row),
            {"cache": {"no_cache": True, "no_store": True}, **trial.params},
            retries=spec.retries,
            ledger=ledger,
        )
    except (CallFailed, InvalidRequestError):
        ledger.settle(None)
        trial.answers[row_index] = _Answer({}, 0.0, None)
        return
    ledger.settle(completion.cost_usd)
    case = ScoreInput(
        output=completion.output,
        expected=row.get(spec.dataset.expected),
        inputs=row,
        latency_s=completion.latency_s,
        cost_usd=completion.cost_usd,
    )
    scores = {}
    for scorer in prepared.scorers:
        try:
            scores[scorer.name] = (await scorer.score(case)).value
        except (CallFailed, InvalidRequestError):
            scores[scorer.name] = 0.0
    trial.answers[row_index] = _Answer(scores, completion.latency_s, completion.cost_usd)


def _measure(trial: Trial, prepared: PreparedSuite, objective: str) -> None:
    """Quality is the scorer's headline over the answered cases; a failed call scores 0."""
    from keel.evals.scorers import Score, ScoreInput

    answers = list(trial.answers.values())
    if not answers:
        return
    for scorer in prepared.scorers:
        scores = [Score(answer.scores.get(scorer.name, 0.0)) for answer in answers]
        cases = [ScoreInput(output="") for _ in answers]
        trial.figures[scorer.name] = float(scorer.aggregate(scores, cases).get("score", 0.0))
    trial.quality = trial.figures[objective]
    latencies = sorted(answer.latency_s * 1000 for answer in answers if answer.latency_s)
    trial.latency_p50_ms = _median(latencies)
    costs = [answer.cost_usd for answer in answers if answer.cost_usd is not None]
    trial.cost_per_1k_requests_usd = 1000 * sum(costs) / len(costs) if costs else None


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def _rank(spec: SearchSpec, trial: Trial) -> tuple[float, float, float]:
    quality = trial.quality if trial.quality is not None else -math.inf
    spend = _spend(spec, trial)
    threshold = spec.select.min_quality
    if threshold is None:
        return (0.0, -quality, spend)
    if quality >= threshold:
        return (0.0, spend, -quality)
    return (1.0, -quality, spend)


def _spend(spec: SearchSpec, trial: Trial) -> float:
    if spec.select.minimize == "latency":
        return trial.latency_p50_ms if trial.latency_p50_ms is not None else math.inf
    return trial.cost_per_1k_requests_usd or 0.0


def _choose(spec: SearchSpec, trials: list[Trial]) -> Trial | None:
    """Among the configurations that reached the most cases, the best under the constraint."""
    measured = [trial for trial in trials if trial.quality is not None]
    if not measured:
        return None
    widest = max(len(trial.answers) for trial in measured)
    finalists = sorted(
        (trial for trial in measured if len(trial.answers) == widest),
        key=lambda trial: _rank(spec, trial),
    )
    best = finalists[0]
    threshold = spec.select.min_quality
    if threshold is not None and (best.quality is None or best.quality < threshold):
        return None
    return best


def _save(
    spec: SearchSpec,
    result: SearchResult,
    url: str | None,
    key: str | None,
    settings: Settings | None,
) -> str:
    from keel.evals.publish import save_run

    chosen = result.chosen
    params: dict[str, Any] = {
        "search": spec.name,
        "objective": result.objective,
        "constraint": result.constraint,
        "dataset": result.dataset_id,
        "strategy": spec.strategy.model_dump(),
    }
    metrics: dict[str, float] = {
        "calls": float(result.calls),
        "grid_calls": float(result.grid_calls),
        "spent_usd": result.spent_usd,
    }
    if chosen is not None:
        params |= {
            "chosen.model": chosen.model,
            "chosen.prompt": chosen.prompt.label,
            "chosen.prompt_version": chosen.prompt.version,
            "chosen.params": chosen.params,
        }
        for name, value in chosen.figures.items():
            metrics[f"chosen.{name}"] = value
        if chosen.cost_per_1k_requests_usd is not None:
            metrics["chosen.cost_per_1k_requests_usd"] = chosen.cost_per_1k_requests_usd
        if chosen.latency_p50_ms is not None:
            metrics["chosen.latency_p50_ms"] = chosen.latency_p50_ms
    tags = {
        "keel.kind": "search",
        "keel.search.status": "partial" if result.stopped else "complete",
    }
    return save_run(
        experiment=spec.experiment or "evals",
        name=spec.name,
        params=params,
        tags=tags,
        metrics=metrics,
        artifacts={"search.json": result.to_json()},
        links=[("dataset", result.dataset_id)],
        url=url,
        api_key=key,
        settings=settings,
    )


async def _register(client: EvalClient, result: SearchResult, target: str) -> list[dict[str, Any]]:
    from keel.evals.publish import parse_model_version

    name, version = parse_model_version(target)
    path = f"/v1/keel/registry/models/{name}/versions/{version}/evaluations"
    assert result.chosen is not None
    written = []
    try:
        for metric, value in result.chosen.figures.items():
            body: dict[str, Any] = {"metric": metric, "value": value, "dataset": result.dataset_id}
            if result.run_id:
                body["run_id"] = result.run_id
            written.append(await client.post(path, body))
    except CallFailed as exc:
        raise InvalidRequestError(f"--register {target}: {exc}", param="register") from None
    return written
