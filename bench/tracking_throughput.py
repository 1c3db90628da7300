"""How fast a tracked run takes metric points, against MLflow's SQLite backend.

    python bench/tracking_throughput.py             # about two minutes on 2 cores
    python bench/tracking_throughput.py --quick     # a smoke run

Each figure is points per second from the first point to the end of the run, so every point
has been written (flushed, and for the server committed by its batched writer) when the clock
stops; the median of `--repeats` runs is printed.

- **keel embedded**: the plain per-point `run.log_metric(key, value, step=i)` loop into the
  embedded store (the `KEEL_HOME` SQLite database, no server).
- **keel remote**: the same loop against a real `keel serve` on loopback (a child process,
  SQLite, local models off).
- **mlflow log_metric** and **mlflow log_batch(1000)**: MLflow's own loop and batches of 1,000
  on its SQLite backend (`pip install -e .[bench]`; skipped with a note if MLflow is missing).

Targets: ≥ 100,000 points/s embedded and ≥ 20,000 points/s remote.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _processes import Children, free_port, keel_command, keel_environment, render


def _keel_loop(points: int, client: object) -> float:
    from keel.tracking import start_run

    with start_run("bench", params={"points": points}, client=client) as run:
        started = time.perf_counter()
        log = run.log_metric
        for step in range(points):
            log("loss", 1.0 / (step + 1), step=step)
    return points / (time.perf_counter() - started)


def _embedded(points: int, home: Path) -> float:
    from keel.config import Settings
    from keel.tracking.embedded import EmbeddedTracking

    tracking = EmbeddedTracking.from_settings(Settings(home=home))
    try:
        return _keel_loop(points, tracking)
    finally:
        tracking.close()


def _wait_ready(url: str, deadline_s: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"keel serve at {url} did not become ready")


def _mlflow_loop(points: int, uri: str, batch: int | None) -> float:
    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("bench") or client.get_experiment(
        client.create_experiment("bench")
    )
    run = client.create_run(experiment.experiment_id)
    run_id = run.info.run_id
    started = time.perf_counter()
    if batch is None:
        for step in range(points):
            client.log_metric(run_id, "loss", 1.0 / (step + 1), step=step)
    else:
        stamp = int(time.time() * 1000)
        for first in range(0, points, batch):
            metrics = [
                Metric("loss", 1.0 / (step + 1), stamp, step)
                for step in range(first, min(points, first + batch))
            ]
            client.log_batch(run_id, metrics=metrics)
    client.set_terminated(run_id)
    return points / (time.perf_counter() - started)


def _median(repeats: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="Small runs, one repeat.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--points", type=int, default=200_000, help="Per Keel run.")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    points = 20_000 if args.quick else args.points
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    rows: list[list[str]] = []

    with tempfile.TemporaryDirectory(prefix="keel-bench-") as scratch:
        root = Path(scratch)
        embedded = _median(repeats, lambda: _embedded(points, root / "embedded"))
        rows.append(["keel embedded, log_metric", f"{points:,}", f"{embedded:,.0f}"])

        home = root / "server"
        home.mkdir()
        config = root / "keel.yaml"
        config.write_text("local_models:\n  chat: false\n  embeddings: false\n")
        port = free_port()
        children = Children()
        try:
            env = keel_environment(home) | {"KEEL_CONFIG": str(config)}
            children.start(
                [*keel_command(), "serve", "--host", "127.0.0.1", "--port", str(port)],
                env=env,
                stdout=open(os.devnull, "wb"),  # noqa: SIM115
                stderr=open(os.devnull, "wb"),  # noqa: SIM115
            )
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url)
            from keel.sdk import Keel

            with Keel(url) as client:
                remote = _median(repeats, lambda: _keel_loop(points, client))
            rows.append(["keel remote, log_metric", f"{points:,}", f"{remote:,.0f}"])
        finally:
            children.stop_all()

        try:
            import mlflow  # noqa: F401
        except ImportError:
            rows.append(["mlflow (not installed: pip install -e .[bench])", "-", "-"])
        else:
            warnings.filterwarnings("ignore")
            uri = f"sqlite:///{root / 'mlflow.db'}"
            loop_points = 300 if args.quick else 1_000
            loop = _median(repeats, lambda: _mlflow_loop(loop_points, uri, None))
            rows.append(["mlflow log_metric loop (sqlite)", f"{loop_points:,}", f"{loop:,.0f}"])
            batch_points = 10_000 if args.quick else 20_000
            batched = _median(repeats, lambda: _mlflow_loop(batch_points, uri, 1000))
            rows.append(["mlflow log_batch(1000) (sqlite)", f"{batch_points:,}", f"{batched:,.0f}"])

    print(render(f"median of {repeats}", ["", "points", "points/s"], rows))


if __name__ == "__main__":
    main()
