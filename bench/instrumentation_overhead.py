"""What instrumentation costs: Keel with Prometheus metrics (and kept traces) on, against Keel
with both off, in the same run on the same fake upstream.

Five processes, loopback only:

* the lean fake OpenAI upstream of `gateway_overhead.py` (a fixed chat.completion);
* three `keel serve`, identical but for `metrics.enabled` and `tracing.enabled`: both off,
  metrics only, and both on; each with its own KEEL_HOME and SQLite database;
* this process, the load generator (aiohttp).

Phases: concurrency 1, a request to the uninstrumented Keel and one to an instrumented one in
turn (the order alternating), so the paired difference of their latencies is what
instrumentation adds (metrics only, then both); then throughput at concurrency 32, the three
in rotation for `--rounds` rounds, compared by their medians and by Keel's CPU time per
request. After the load, one scrape of the fully instrumented Keel's `/metrics` shows what it
counted, and `Metrics.observe` is timed in this process.

    python bench/instrumentation_overhead.py            # about a minute on 2 cores
    python bench/instrumentation_overhead.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from _processes import (
    HOST,
    Children,
    free_port,
    keel_command,
    keel_environment,
    render,
    run_fast,
)
from gateway_overhead import (
    CLIENTS,
    Paired,
    Target,
    Throughput,
    interleaved,
    log_tail,
    median,
    ms,
    percentiles,
    request_body,
    throughput,
    verdict,
    wait_ready,
)

TARGET_ADDED_P50_MS = 0.1
TARGET_THROUGHPUT_DROP = 0.05
GATEWAY_OVERHEAD = Path(__file__).with_name("gateway_overhead.py")


@dataclass
class Settings:
    requests: int
    warmup: int
    throughput_requests: int
    concurrency: int
    rounds: int
    cap_s: float


def write_config(path: Path, fake_port: int, metrics: bool, tracing: bool) -> None:
    path.write_text(
        "local_models: {chat: false, embeddings: false}\n"
        "models:\n"
        "  - id: bench-model\n"
        "    provider: openai\n"
        "    model: gpt-4o-mini\n"
        f"    api_base: http://{HOST}:{fake_port}/v1\n"
        "    api_key: sk-bench\n"
        f"metrics: {{enabled: {str(metrics).lower()}}}\n"
        f"tracing: {{enabled: {str(tracing).lower()}}}\n",
        encoding="utf-8",
    )


def start_keel(
    children: Children, workdir: Path, name: str, fake_port: int, metrics: bool, tracing: bool
) -> tuple[subprocess.Popen[bytes], int, Path]:
    config = workdir / f"{name}.yaml"
    write_config(config, fake_port, metrics, tracing)
    port = free_port()
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        process = children.start(
            [
                *keel_command(),
                "serve",
                "--config",
                str(config),
                "--host",
                HOST,
                "--port",
                str(port),
            ],
            env=keel_environment(workdir / f"{name}-home"),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return process, port, log_path


# name -> (metrics.enabled, tracing.enabled). "off" is the baseline every other is paired with.
VARIANTS = {"off": (False, False), "metrics": (True, False), "both": (True, True)}
LABELS = {"off": "both off", "metrics": "metrics only", "both": "metrics + traces"}


@dataclass
class Results:
    paired: dict[str, Paired]  # "metrics" and "both", each against "off"
    runs: dict[str, list[Throughput]]
    scrape: str


async def measure(
    settings: Settings,
    ports: dict[str, int],
    processes: dict[str, subprocess.Popen[bytes]],
) -> Results:
    for name, port in ports.items():
        await wait_ready(f"http://{HOST}:{port}/readyz", processes[name], 90)
    path = "/v1/chat/completions"
    urls = {name: f"http://{HOST}:{port}{path}" for name, port in ports.items()}
    client_class = CLIENTS["aiohttp"]
    body = request_body("bench-model", False)
    single = {name: Target(name, urls[name], client_class(1)) for name in VARIANTS}
    paired: dict[str, Paired] = {}
    try:
        for name in ("metrics", "both"):
            off, on = single["off"], single[name]
            await interleaved(off, on, (body, body), False, settings.warmup, settings.cap_s)
            if off.failed or on.failed:
                raise RuntimeError(f"warm-up failed: {off.failed} off, {on.failed} {name}")
            paired[name] = await interleaved(
                off, on, (body, body), False, settings.requests, settings.cap_s
            )
    finally:
        for target in single.values():
            await target.client.aclose()

    c = settings.concurrency
    runs: dict[str, list[Throughput]] = {name: [] for name in VARIANTS}
    targets = {name: Target(name, urls[name], client_class(c)) for name in VARIANTS}
    names = list(VARIANTS)
    try:
        for name, target in targets.items():
            pids: dict[str, int | None] = {"Keel": processes[name].pid}
            await throughput(target, body, max(settings.warmup, 2 * c), c, settings.cap_s, pids)
        for round_index in range(settings.rounds):
            # Rotate which goes first, so none always runs on a warmer (or busier) machine.
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                pids = {"Keel": processes[name].pid}
                runs[name].append(
                    await throughput(
                        targets[name], body, settings.throughput_requests, c, settings.cap_s, pids
                    )
                )
    finally:
        for target in targets.values():
            await target.client.aclose()
    return Results(paired, runs, await scrape_metrics(ports["both"]))


async def scrape_metrics(port: int) -> str:
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{HOST}:{port}/metrics") as response,
    ):
        return await response.text()


def summarize_scrape(text: str) -> list[list[str]]:
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {
        "keel_requests_total",
        "keel_request_duration_seconds_count",
        "keel_records_written_total",
        "keel_records_dropped_total",
    }
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                key = sample.name
                if "writer" in sample.labels:
                    key += f"{{writer={sample.labels['writer']}}}"
                totals[key] = totals.get(key, 0.0) + sample.value
    return [[name, f"{value:,.0f}"] for name, value in sorted(totals.items())]


def observer_cost(calls: int = 20000) -> tuple[float, float]:
    """In this process: microseconds `Metrics.observe` takes per finished call (p50, p99),
    and milliseconds one scrape takes after them. Load on the machine barely moves these."""
    from keel.config import Settings as KeelSettings
    from keel.gateway.call import Call
    from keel.gateway.pricing import Usage
    from keel.identity import Actor
    from keel.monitoring.metrics import Metrics
    from keel.routing import build_router

    class Idle:  # a batched writer with nothing to do
        pending = written = dropped = write_failures = 0

    config = KeelSettings.model_validate(
        {
            "local_models": {"chat": False, "embeddings": False},
            "models": [{"id": "m", "provider": "openai", "api_base": f"http://{HOST}:9/v1"}],
        }
    )
    router = build_router(config, None)  # no call is made: no HTTP session
    metrics = Metrics(config.metrics, router=router, recorder=Idle(), audit=Idle())
    deployment = router.group("m").deployments[0]
    usage = Usage.from_openai({"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21})
    actor = Actor("bench", team="bench-team", kind="user")
    timings = []
    for _ in range(calls):
        call = Call(endpoint="chat.completions", request_headers={"content-length": "128"})
        call.group, call.actor, call.usage, call.cost_usd = "m", actor, usage, 0.0001
        call.trace.deployment, call.trace.group = deployment, "m"
        call.trace.tried.append(("m", "ok"))
        call.upstream_s, call.answered = 0.005, True
        record = call.record()
        started = time.perf_counter()
        metrics.observe(call, record)
        timings.append((time.perf_counter() - started) * 1e6)
    started = time.perf_counter()
    metrics.exposition(None)
    scrape_ms = (time.perf_counter() - started) * 1000
    return percentiles(timings)[0], scrape_ms


def latency_table(paired: dict[str, Paired]) -> str:
    rows = []
    for name, pair in paired.items():
        off, on = percentiles(pair.direct), percentiles(pair.keel)
        added = [b - a for a, b in zip(off, on, strict=True)]
        label = LABELS[name]
        rows += [
            [f"{label}: off", *map(ms, off), ms(statistics.fmean(pair.direct))],
            [f"{label}: on", *map(ms, on), ms(statistics.fmean(pair.keel))],
            [f"{label}: added (of percentiles)", *map(ms, added), ""],
            [f"{label}: paired difference", *map(ms, percentiles(pair.differences)), ""],
        ]
    n = min(len(pair.differences) for pair in paired.values())
    return render(
        f"Latency at concurrency 1, ms ({n}+ pairs each, against both off, interleaved)",
        ["", "p50", "p90", "p99", "mean"],
        rows,
    )


def cpu_ms(run: Throughput) -> float:
    return 1000 * run.cpu["Keel"] / max(len(run.latencies), 1)


def throughput_table(runs: dict[str, list[Throughput]], c: int) -> str:
    rows = []
    for name, variant_runs in runs.items():
        for index, run in enumerate(variant_runs, 1):
            p50, _, p99 = percentiles(run.latencies)
            rows.append(
                [
                    f"{LABELS[name]}, round {index}",
                    str(run.requests),
                    str(run.failed),
                    f"{run.rps:,.0f}",
                    ms(p50),
                    ms(p99),
                    f"{cpu_ms(run):.3f}",
                ]
            )
    return render(
        f"Throughput at concurrency {c}, non-streaming",
        ["", "requests", "failed", "req/s", "p50 ms", "p99 ms", "Keel CPU ms/request"],
        rows,
    )


def run(settings: Settings) -> int:
    children = Children()
    with tempfile.TemporaryDirectory(prefix="keel-bench-instr-") as tmp:
        workdir = Path(tmp)
        try:
            fake_port = free_port()
            children.start(
                [sys.executable, str(GATEWAY_OVERHEAD), "--fake-upstream", str(fake_port)],
                stdin=subprocess.DEVNULL,
            )
            processes, ports, logs = {}, {}, {}
            for name, (metrics, tracing) in VARIANTS.items():
                processes[name], ports[name], logs[name] = start_keel(
                    children, workdir, name, fake_port, metrics, tracing
                )
            listening = ", ".join(f"{LABELS[name]} on :{port}" for name, port in ports.items())
            print(
                f"fake upstream on :{fake_port}; Keel {listening}; {os.cpu_count()} CPUs, "
                f"load average {os.getloadavg()[0]:.2f}",
                flush=True,
            )
            started = time.perf_counter()
            try:
                results = run_fast(measure(settings, ports, processes))
            except RuntimeError as exc:
                tails = "\n".join(f"--- {n} ---\n{log_tail(p)}" for n, p in logs.items())
                print(f"benchmark failed: {exc}\n{tails}")
                return 1
            measured_s = time.perf_counter() - started
        finally:
            children.stop_all()

    print()
    print(latency_table(results.paired))
    print()
    print(throughput_table(results.runs, settings.concurrency))
    print()
    print(
        render(
            "What the fully instrumented Keel counted (its /metrics)",
            ["", "value"],
            summarize_scrape(results.scrape),
        )
    )
    observe_us, scrape_ms = observer_cost()
    print()
    print(
        f"Metrics.observe in process: p50 {observe_us:.1f} us per call; "
        f"one scrape {scrape_ms:.1f} ms"
    )
    baseline_rps = median([run.rps for run in results.runs["off"]])
    baseline_cpu = median([cpu_ms(run) for run in results.runs["off"]])
    print()
    print("Targets (instrumentation on against both off; CPU per request is the figure load")
    print("on the machine disturbs least):")
    for name in ("metrics", "both"):
        added_p50 = median(results.paired[name].differences)
        rps = median([run.rps for run in results.runs[name]])
        drop = (baseline_rps - rps) / baseline_rps if baseline_rps else float("nan")
        cpu_added = median([cpu_ms(run) for run in results.runs[name]]) - baseline_cpu
        print(
            f"  {LABELS[name]}: added latency p50 (paired) {added_p50:.3f} ms "
            f"<= {TARGET_ADDED_P50_MS:g} ms: {verdict(added_p50 <= TARGET_ADDED_P50_MS)}; "
            f"throughput {rps:,.0f} vs {baseline_rps:,.0f} req/s, drop {drop:.1%} "
            f"<= {TARGET_THROUGHPUT_DROP:.0%}: {verdict(drop <= TARGET_THROUGHPUT_DROP)}; "
            f"Keel CPU {cpu_added:+.3f} ms per request"
        )
    print(f"(measured in {measured_s:.1f} s)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="pairs at concurrency 1")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured pairs first")
    parser.add_argument("--throughput-requests", type=int, default=8000, help="per round")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds of each")
    parser.add_argument("--cap", type=float, default=45.0, help="max seconds per phase")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.warmup, args.throughput_requests, args.rounds = 300, 50, 2000, 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    settings = Settings(
        requests=args.requests,
        warmup=args.warmup,
        throughput_requests=args.throughput_requests,
        concurrency=args.concurrency,
        rounds=args.rounds,
        cap_s=args.cap,
    )
    try:
        return run(settings)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
