"""Eval throughput: cases/s at concurrency 1, 8 and 32 through a real `keel serve`.

    python bench/eval_throughput.py                  # about a minute on 2 cores
    python bench/eval_throughput.py --quick          # a smoke run

A fake OpenAI upstream (tests/fakes/openai.py, each answer delayed by --delay-ms to stand in
for a model) and `keel serve` (one model pointing at it, local models off, temporary
KEEL_HOME) run as child processes on loopback. This process runs a suite of N one-row cases
with `keel.evals.run_suite` (remote mode, exact_match scorer, no resume state, no run saved)
--repeats times per concurrency and prints the median cases/s. With a fixed upstream delay,
cases/s grows with concurrency until the gateway (or this client) saturates.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from _processes import HOST, Children, free_port, keel_command, keel_environment, render

ROOT = Path(__file__).resolve().parents[1]
MODEL = "bench-model"
FAKE = """
import sys, uvicorn
sys.path.insert(0, {root!r})
from tests.fakes.openai import FakeOpenAI
fake = FakeOpenAI()
fake.delays[{model!r}] = {delay}
uvicorn.run(fake.app(), host={host!r}, port={port}, log_level="warning", access_log=False)
"""


def wait_for(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {timeout_s} s")


def suite(cases: int) -> dict[str, object]:
    return {
        "name": "bench-eval-throughput",
        "models": [MODEL],
        "prompts": [{"id": "echo", "template": "question {{ n }}"}],
        "dataset": {"rows": [{"n": i, "expected": f"Echo: question {i}"} for i in range(cases)]},
        "scorers": ["exact_match"],
        "params": {"max_tokens": 8},
        "retries": 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer cases, one repeat")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="upstream answer delay")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    plan = {1: 20, 8: 80, 32: 160} if args.quick else {1: 60, 8: 240, 32: 640}

    from keel.evals import run_suite

    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    children = Children()
    with tempfile.TemporaryDirectory() as temp:
        try:
            fake_port, keel_port = free_port(), free_port()
            script = FAKE.format(
                root=str(ROOT), model=MODEL, delay=args.delay_ms / 1000, host=HOST, port=fake_port
            )
            children.start([sys.executable, "-c", script])
            wait_for(f"http://{HOST}:{fake_port}/v1/models")
            config = {
                "local_models": {"chat": False, "embeddings": False},
                "models": [
                    {
                        "id": MODEL,
                        "provider": "openai",
                        "api_base": f"http://{HOST}:{fake_port}/v1",
                        "api_key": "sk-bench",
                    }
                ],
            }
            config_path = Path(temp) / "keel.yaml"
            config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
            home = Path(temp) / "home"
            children.start(
                [*keel_command(), "serve", "--port", str(keel_port), "-c", str(config_path)],
                env=keel_environment(home),
                stdout=open(os.devnull, "wb"),  # noqa: SIM115
            )
            url = f"http://{HOST}:{keel_port}"
            wait_for(f"{url}/readyz")
            run_suite(suite(8), url=url, concurrency=8, resume=False, save=False)  # warm-up
            rows = []
            for concurrency, cases in plan.items():
                rates = []
                for _ in range(repeats):
                    started = time.perf_counter()
                    result = run_suite(
                        suite(cases), url=url, concurrency=concurrency, resume=False, save=False
                    )
                    elapsed = time.perf_counter() - started
                    assert len(result.records) == cases and not result.failures
                    rates.append(cases / elapsed)
                rows.append(
                    [
                        str(concurrency),
                        str(cases),
                        f"{statistics.median(rates):.1f}",
                        f"{min(rates):.1f}",
                        f"{max(rates):.1f}",
                    ]
                )
            print(
                render(
                    f"eval throughput (upstream delay {args.delay_ms:g} ms, {repeats} repeats)",
                    ["concurrency", "cases", "median cases/s", "min", "max"],
                    rows,
                )
            )
        finally:
            children.stop_all()


if __name__ == "__main__":
    main()
