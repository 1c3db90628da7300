"""A run never stays `running` for ever: a script that raises, one that exits with the run
still open, and one killed outright (SIGKILL) all leave it `failed`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from keel.tracking.embedded import EmbeddedTracking
from tests.tracking.run_helpers import embedded, settings_for

ROOT = Path(__file__).resolve().parents[2]


def _script(keel_home: Path, body: str, **env: str) -> subprocess.Popen[str]:
    code = "import keel, sys, time\n" + textwrap.dedent(body)
    environment = {**os.environ, "KEEL_HOME": str(keel_home), **env}
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run_id(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    assert line.startswith("run_"), (line, process.stderr.read() if process.stderr else "")
    return line


def _tracking(keel_home: Path, **config: float) -> EmbeddedTracking:
    return next(embedded(settings_for(keel_home, None, tracking=config)))


def test_an_exception_in_the_with_block_fails_the_run(keel_home: Path) -> None:
    process = _script(
        keel_home,
        """
        with keel.start_run(experiment="crashes") as run:
            print(run.id, flush=True)
            run.log_metric("loss", 0.5)
            raise ValueError("diverged")
        """,
    )
    run_id = _run_id(process)
    assert process.wait(timeout=120) == 1
    found = _tracking(keel_home).get_run(run_id)
    assert found["status"] == "failed"
    assert found["error"] == "ValueError: diverged"
    assert found["metrics"]["loss"]["last"] == 0.5


def test_exiting_with_the_run_open_fails_it(keel_home: Path) -> None:
    process = _script(
        keel_home,
        """
        run = keel.start_run(experiment="crashes")
        print(run.id, flush=True)
        run.log_metric("loss", 0.25)
        raise SystemExit(3)
        """,
    )
    run_id = _run_id(process)
    assert process.wait(timeout=120) == 3
    found = _tracking(keel_home).get_run(run_id)
    assert found["status"] == "failed"
    assert found["error"] == "the process exited before the run finished"
    assert found["metrics"]["loss"]["last"] == 0.25


def test_a_killed_process_leaves_its_run_lost(keel_home: Path) -> None:
    config = keel_home / "keel.yaml"
    keel_home.mkdir(parents=True, exist_ok=True)
    config.write_text("tracking:\n  heartbeat_interval_s: 0.2\n  stale_after_s: 5\n")
    process = _script(
        keel_home,
        """
        run = keel.start_run(experiment="crashes")
        run.log_metric("loss", 0.75)
        run.flush()
        print(run.id, flush=True)
        time.sleep(600)
        """,
        KEEL_CONFIG=str(config),
    )
    run_id = _run_id(process)
    tracking = _tracking(keel_home, heartbeat_interval_s=0.2, stale_after_s=5)
    # Alive, it heartbeats: its heartbeat moves on past its start.
    first = tracking.get_run(run_id)
    deadline = time.monotonic() + 60
    while tracking.get_run(run_id)["heartbeat_at"] == first["heartbeat_at"]:
        if time.monotonic() > deadline:
            pytest.fail("the live run never heartbeat")
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)

    deadline = time.monotonic() + 60
    while (found := tracking.get_run(run_id))["status"] == "running":
        if time.monotonic() > deadline:
            pytest.fail("the killed run was never marked lost")
        time.sleep(0.5)
    assert found["status"] == "failed"
    assert found["error"].startswith("lost: no heartbeat")
    assert found["metrics"]["loss"]["last"] == 0.75
