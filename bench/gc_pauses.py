"""Garbage-collector pauses inside a loaded Keel server.

Starts the fake upstream of `gateway_overhead.py` and a real `keel serve` whose interpreter has a
`gc.callbacks` hook that times every collection (by generation) and writes them to a JSON file
when the server exits. The bundled local models and the PII analyzer are on, so the background
warm-up leaves its ~10^5 long-lived objects (torch, phonenumbers, ...) behind, as in a default
deployment. After the warm-up, it sends `--requests` non-streaming requests at concurrency
`--concurrency`, stops Keel with SIGINT and prints how many collections ran, how long they
paused the server (median, p99, max, total) and what share of the loaded wall time that is.

    python bench/gc_pauses.py                    # 20,000 requests at c=32
    python bench/gc_pauses.py --requests 2000    # a smoke run

To compare with another build, run its copy of this file with its sources first on the path
(`PYTHONPATH=<worktree>/src python bench/gc_pauses.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _processes import HOST, Children, free_port, keel_environment, render, run_fast, stop_process
from gateway_overhead import CLIENTS, Target, request_body, wait_ready

# Runs inside the Keel process: times each collection, dumps the list at exit.
_HOOK = """
import atexit, gc, json, sys, time
_report = sys.argv.pop(1)
_started = {}
_pauses = []
def _timed(phase, info):
    if phase == "start":
        _started[0] = time.perf_counter()
    else:
        now = time.perf_counter()
        _pauses.append((info["generation"], now - _started.pop(0, now), info["collected"], now))
gc.callbacks.append(_timed)
def _dump():
    with open(_report, "w") as out:
        json.dump({"pauses": _pauses, "frozen": gc.get_freeze_count(),
                   "threshold": gc.get_threshold()}, out)
atexit.register(_dump)
from keel.cli import main
sys.argv[0] = "keel"
main()
"""


def write_config(path: Path, fake_port: int) -> None:
    path.write_text(
        "models:\n"
        "  - id: bench-model\n"
        "    provider: openai\n"
        "    model: gpt-4o-mini\n"
        f"    api_base: http://{HOST}:{fake_port}/v1\n"
        "    api_key: sk-bench\n",
        encoding="utf-8",
    )


async def load(url: str, requests: int, concurrency: int) -> tuple[float, float, float]:
    """Send the requests; (seconds, loaded window's start and end on the perf clock)."""
    target = Target("through Keel", url, CLIENTS["aiohttp"](concurrency))
    body = request_body("bench-model", False)
    issued = 0

    async def worker() -> None:
        nonlocal issued
        while issued < requests:
            issued += 1
            await target.call(body, stream=False)

    try:
        for _ in range(2 * concurrency):
            await target.call(body, stream=False)
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        ended = time.perf_counter()
    finally:
        await target.client.aclose()
    if target.failed:
        raise RuntimeError(f"{target.failed} requests failed")
    return ended - started, started, ended


async def wait_warm(url: str, timeout_s: float) -> None:
    """Until /readyz answers ready: the PII analyzer, the warm-up's last step, has loaded."""
    import aiohttp

    deadline = time.perf_counter() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.perf_counter() < deadline:
            async with session.get(url) as response:
                if response.status == 200:
                    return
            await asyncio.sleep(0.5)
    raise RuntimeError("Keel did not become ready")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    children = Children()
    with tempfile.TemporaryDirectory(prefix="keel-gc-") as tmp:
        workdir = Path(tmp)
        config, report = workdir / "keel.yaml", workdir / "gc.json"
        fake_port, keel_port = free_port(), free_port()
        bench = Path(__file__).with_name("gateway_overhead.py")
        try:
            fake = children.start(
                [sys.executable, str(bench), "--fake-upstream", str(fake_port)],
                stdin=subprocess.DEVNULL,
            )
            write_config(config, fake_port)
            command = [sys.executable, "-c", _HOOK, str(report), "serve", "--config", str(config)]
            keel = children.start(
                [*command, "--host", HOST, "--port", str(keel_port)],
                env=keel_environment(workdir / "home"),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            base = f"http://{HOST}:{keel_port}"
            run_fast(wait_ready(f"{base}/readyz", keel, 120))
            run_fast(wait_warm(f"{base}/readyz", 300))
            time.sleep(2)  # the freeze runs right after the warm-up
            seconds, started, ended = run_fast(
                load(f"{base}/v1/chat/completions", args.requests, args.concurrency)
            )
            stop_process(keel, signal.SIGINT, 60)
            del fake
        finally:
            children.stop_all()
        data = json.loads(report.read_text())
    # perf_counter is per process but shares the monotonic clock on Linux: the loaded window
    # of this process matches the server's.
    pauses = [p for p in data["pauses"] if started <= p[3] <= ended]
    rows = []
    for generation in (0, 1, 2):
        times = sorted(p[1] * 1000 for p in pauses if p[0] == generation)
        if not times:
            rows.append([f"gen {generation}", "0", "", "", "", ""])
            continue
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        rows.append(
            [
                f"gen {generation}",
                str(len(times)),
                f"{statistics.median(times):.2f}",
                f"{p99:.2f}",
                f"{times[-1]:.2f}",
                f"{sum(times):.0f}",
            ]
        )
    total_ms = sum(p[1] for p in pauses) * 1000
    print(
        render(
            f"Collections during {args.requests} requests at c={args.concurrency} "
            f"({seconds:.1f} s, {args.requests / seconds:.0f} req/s); "
            f"frozen objects {data['frozen']}, thresholds {tuple(data['threshold'])}",
            ["generation", "count", "median ms", "p99 ms", "max ms", "total ms"],
            rows,
        )
    )
    print(f"  paused {total_ms:.0f} ms of {seconds * 1000:.0f} ms ({total_ms / seconds / 10:.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
