"""Configuration search: successive halving finds the known-best configuration with fewer
calls than the grid, respects its budget, and reports the Pareto front."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from keel.cli.app import app
from keel.evals.search import Trial, pareto_front
from keel.evals.suite import PromptSpec, inline_prompt
from tests.evals.eval_fixtures import script, write_config, write_dataset
from tests.fakes.openai import FakeOpenAI

runner = CliRunner()


def write_spec(folder: Path, **overrides: Any) -> Path:
    write_dataset(folder)
    spec: dict[str, Any] = {
        "name": "yes-no-search",
        "dataset": {"path": "questions.jsonl"},
        "scorers": ["contains"],
        "models": ["m-yes", "m-echo"],
        "prompts": [
            {"id": "bare", "template": "{{ question }}"},
            {"id": "hinted", "template": "{{ question }} (answer: {{ expected }})"},
        ],
        "params": {"temperature": [0, 0.5, 1.0], "max_tokens": 8},
        "strategy": {"eta": 3, "min_cases": 1, "seed": 7},
        "select": {"min_quality": 0.85, "minimize": "cost"},
        **overrides,
    }
    path = folder / "search.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


@pytest.fixture
def config(tmp_path: Path, keel_home: Path, fake_openai: FakeOpenAI, fake_openai_url: str) -> Path:
    script(fake_openai)
    return write_config(tmp_path, keel_home, fake_openai_url)


def test_search_finds_the_cheapest_config_meeting_the_bar_in_fewer_calls(
    tmp_path: Path, config: Path, fake_openai: FakeOpenAI
) -> None:
    spec = write_spec(tmp_path)
    out = tmp_path / "trials.csv"
    result = runner.invoke(
        app, ["eval", "search", str(spec), "-c", str(config), "--json", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    # Only m-echo with the hinted prompt reaches contains >= 0.85 (it scores 1.0); its three
    # temperatures cost the same, so the first in the grid (temperature 0) is chosen.
    chosen = found["chosen"]
    assert (chosen["model"], chosen["prompt"]) == ("m-echo", "hinted")
    assert chosen["params"] == {"temperature": 0, "max_tokens": 8}
    assert chosen["quality"] == 1.0 and chosen["cases"] == 10
    # 12 configurations x 10 rows is the grid; halving with eta 3 from 1 case asks
    # 12x1 + 4x(3-1) + 2x(9-3) + 1x(10-9) = 33 questions.
    assert found["grid_calls"] == 120
    assert found["calls"] == 33 == fake_openai.count()
    assert found["constraint"] == "lowest cost with contains >= 0.85"
    assert found["run_id"]
    assert out.read_text().splitlines()[0].startswith("model,prompt,params,cases,quality")


def test_search_stops_at_its_budget(tmp_path: Path, config: Path, fake_openai: FakeOpenAI) -> None:
    spec = write_spec(tmp_path, budget={"max_calls": 5})
    result = runner.invoke(app, ["eval", "search", str(spec), "-c", str(config), "--json"])
    found = json.loads(result.output)
    assert found["stopped"] == "budget reached: max_calls 5"
    assert found["calls"] == 5 == fake_openai.count()
    assert result.exit_code in (1, 3)


def test_search_bad_input(tmp_path: Path, config: Path, fake_openai: FakeOpenAI) -> None:
    spec = write_spec(tmp_path, objective="bleu")
    result = runner.invoke(app, ["eval", "search", str(spec), "-c", str(config)])
    assert result.exit_code == 1 and "objective 'bleu' is not one of the scorers" in result.output
    spec = write_spec(tmp_path, params={"temperature": {"min": 1, "max": 0}})
    result = runner.invoke(app, ["eval", "search", str(spec), "-c", str(config)])
    assert result.exit_code == 1 and "params.temperature" in result.output
    assert fake_openai.count() == 0


def _trial(quality: float, cost: float, latency: float) -> Trial:
    prompt = inline_prompt(PromptSpec(id=f"p{quality}{cost}{latency}", template="x"))
    trial = Trial("m", prompt, {})
    trial.quality, trial.cost_per_1k_requests_usd, trial.latency_p50_ms = quality, cost, latency
    return trial


def test_pareto_front_by_hand() -> None:
    best = _trial(0.9, 5.0, 100.0)
    cheap = _trial(0.5, 1.0, 100.0)
    fast = _trial(0.5, 5.0, 10.0)
    dominated = _trial(0.5, 5.0, 100.0)  # best is at least as good everywhere, better in one
    worse = _trial(0.4, 6.0, 200.0)
    front = pareto_front([best, cheap, fast, dominated, worse])
    assert front == [best, cheap, fast]


def test_generated_prompt_variants_join_the_search(
    tmp_path: Path, config: Path, fake_openai: FakeOpenAI
) -> None:
    # m-echo as the writer answers "Echo: Improve this:\n\n{{ question }}": a variant with the
    # same placeholder as `bare`, so it is kept and searched like the others.
    spec = write_spec(
        tmp_path,
        models=["m-echo"],
        prompts=[{"id": "bare", "template": "{{ question }}"}],
        params={},
        select={},
        generate_prompts={"model": "m-echo", "count": 1, "instruction": "Improve this:"},
    )
    result = runner.invoke(app, ["eval", "search", str(spec), "-c", str(config), "--json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    assert sorted(trial["prompt"] for trial in found["trials"]) == ["bare", "bare~gen1"]
    # 1 generation call, then 2 configurations: 2x1, 1x(3-1), 1x(9-3), 1x(10-9).
    assert found["calls"] == 1 + 2 + 2 + 6 + 1 == fake_openai.count()
    assert fake_openai.requests[0].body["messages"][0]["content"].startswith("Improve this:")
