"""Keel's gateway overhead: latency it adds over a direct upstream call, and its throughput.

Three processes, loopback only:

* a lean fake OpenAI upstream (a raw uvloop + httptools protocol, this file with
  `--fake-upstream PORT`) answering POST /v1/chat/completions with a fixed chat.completion, or
  with a short SSE stream (chunks, a usage chunk when asked for, `data: [DONE]`);
* a real Keel server (`keel serve`) with one deployment, `bench-model`, pointing at the fake,
  its own KEEL_HOME and SQLite database in a temporary directory;
* this process, the load generator (aiohttp by default, `--client httpx` to compare).

Phases: concurrency 1, direct and through Keel interleaved request by request (non-streaming,
then streaming, timed to the end of the stream); then concurrency 64, non-streaming, direct
(the ceiling of this setup) and through Keel. Keel is then stopped with SIGINT and the rows of
`request_records` are counted against the requests Keel answered.

    python bench/gateway_overhead.py            # defaults: about a minute on 2 cores
    python bench/gateway_overhead.py --quick    # a smoke run
    python bench/gateway_overhead.py --py-spy /tmp/keel.svg   # profile Keel at concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson

from _processes import (
    HOST,
    Children,
    free_port,
    keel_command,
    keel_environment,
    render,
    run_fast,
    stop_process,
)

T = TypeVar("T")
TARGET_ADDED_P50_MS = 1.0
TARGET_ADDED_P99_MS = 3.0
TARGET_RPS = 1000.0

# -- the fake upstream ---------------------------------------------------------------------------

_COMPLETION = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
    }
)


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(payload: dict[str, Any]) -> bytes:
    return _http_chunk(b"data: " + orjson.dumps(payload) + b"\n\n")


_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
_STREAM_EVENTS = [
    _event(_chunk({"role": "assistant", "content": ""})),
    *(_event(_chunk({"content": word})) for word in ("Hello!", " How can", " I help", " you?")),
    _event(_chunk({}, "stop")),
]
_USAGE_EVENT = _event(
    _chunk({})
    | {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}}
)
_STREAM_END = _http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


def _plain(status: bytes, body: bytes) -> bytes:
    head = b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    return head % (status, len(body)) + body


_COMPLETION_RESPONSE = _plain(b"200 OK", _COMPLETION)
_NOT_FOUND = _plain(b"404 Not Found", b'{"error": {"message": "not found"}}')
_BAD_REQUEST = _plain(b"400 Bad Request", b'{"error": {"message": "bad request"}}')


class FakeUpstream(asyncio.Protocol):
    """HTTP/1.1 keep-alive, one parser per connection, answers written as soon as parsed."""

    def __init__(self) -> None:
        import httptools

        self._parser = httptools.HttpRequestParser(self)
        self._parse_error = httptools.HttpParserError
        self._transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses
        self._url = b""
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except Exception:  # malformed request or an upgrade: not for this server
            if self._transport is not None:
                self._transport.close()

    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        transport = self._transport
        if transport is None:
            return
        path = self._url.split(b"?", 1)[0]
        if self._parser.get_method() != b"POST" or path != b"/v1/chat/completions":
            transport.write(_NOT_FOUND)
        else:
            try:
                request = orjson.loads(b"".join(self._body))
            except orjson.JSONDecodeError:
                request = None
            if not isinstance(request, dict):
                transport.write(_BAD_REQUEST)
            elif request.get("stream"):
                transport.write(_STREAM_HEAD)
                for event in _STREAM_EVENTS:
                    transport.write(event)
                if (request.get("stream_options") or {}).get("include_usage"):
                    transport.write(_USAGE_EVENT)
                transport.write(_STREAM_END)
            else:
                transport.write(_COMPLETION_RESPONSE)
        if not self._parser.should_keep_alive():
            transport.close()


def serve_fake_upstream(port: int) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(FakeUpstream, HOST, port, backlog=2048)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        server.close()

    run_fast(main())


# -- child processes -----------------------------------------------------------------------------


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# -- the load generator --------------------------------------------------------------------------

Response = tuple[int, str | None, bytes]  # status, x-keel-overhead-ms, body


class Client:
    """One connection pool per target, sized to the concurrency."""

    async def post(self, url: str, body: bytes) -> Response:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError


class AiohttpClient(Client):
    def __init__(self, limit: int) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit, ttl_dns_cache=None),
            timeout=aiohttp.ClientTimeout(total=60),
            auto_decompress=False,
        )

    async def post(self, url: str, body: bytes) -> Response:
        async with self._session.post(url, data=body, headers=REQUEST_HEADERS) as response:
            data = await response.read()
            return response.status, response.headers.get("x-keel-overhead-ms"), data

    async def aclose(self) -> None:
        await self._session.close()


class HttpxClient(Client):
    def __init__(self, limit: int) -> None:
        import httpx

        self._client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
            timeout=60,
            trust_env=False,
        )

    async def post(self, url: str, body: bytes) -> Response:
        response = await self._client.post(url, content=body, headers=REQUEST_HEADERS)
        return response.status_code, response.headers.get("x-keel-overhead-ms"), response.content

    async def aclose(self) -> None:
        await self._client.aclose()


CLIENTS: dict[str, type[Client]] = {"aiohttp": AiohttpClient, "httpx": HttpxClient}
REQUEST_HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench"}


def request_body(model: str, stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello in five words."}],
        "max_tokens": 16,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


def answered_ok(status: int, data: bytes, stream: bool) -> bool:
    if status != 200:
        return False
    return data.endswith(b"data: [DONE]\n\n") if stream else data.startswith(b"{")


@dataclass
class Target:
    name: str
    url: str
    client: Client
    answered: int = 0  # responses received, whatever their status (Keel records every one)
    failed: int = 0  # transport failures or wrong answers

    async def call(self, body: bytes, stream: bool) -> tuple[float, str | None] | None:
        started = time.perf_counter()
        try:
            status, overhead, data = await self.client.post(self.url, body)
        except Exception:
            self.failed += 1
            return None
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.answered += 1
        if not answered_ok(status, data, stream):
            self.failed += 1
            return None
        return elapsed_ms, overhead


@dataclass
class Paired:
    """Concurrency-1 latencies, direct and through Keel, taken alternately."""

    label: str
    direct: list[float] = field(default_factory=list)
    keel: list[float] = field(default_factory=list)
    differences: list[float] = field(default_factory=list)
    overheads: list[float] = field(default_factory=list)


async def interleaved(
    direct: Target, keel: Target, bodies: tuple[bytes, bytes], stream: bool, n: int, cap_s: float
) -> Paired:
    result = Paired("streaming" if stream else "non-streaming")
    deadline = time.perf_counter() + cap_s
    for i in range(n):
        if time.perf_counter() > deadline:
            break
        # Alternate which goes first so neither always follows the other's wake-ups.
        if i % 2:
            via_keel = await keel.call(bodies[1], stream)
            straight = await direct.call(bodies[0], stream)
        else:
            straight = await direct.call(bodies[0], stream)
            via_keel = await keel.call(bodies[1], stream)
        if straight is None or via_keel is None:
            continue
        result.direct.append(straight[0])
        result.keel.append(via_keel[0])
        result.differences.append(via_keel[0] - straight[0])
        if via_keel[1] is not None:
            result.overheads.append(float(via_keel[1]))
    return result


@dataclass
class Throughput:
    label: str
    requests: int
    failed: int
    seconds: float
    latencies: list[float]
    overheads: list[float]
    cpu: dict[str, float]  # process -> CPU seconds used during the run

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process (Linux /proc); this process's own when pid is None."""
    if pid is None:
        return time.process_time()
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def throughput(
    target: Target,
    body: bytes,
    n: int,
    concurrency: int,
    cap_s: float,
    pids: dict[str, int | None],
) -> Throughput:
    latencies: list[float] = []
    overheads: list[float] = []
    issued = 0
    failed_before = target.failed
    deadline = time.perf_counter() + cap_s

    async def worker() -> None:
        nonlocal issued
        while issued < n and time.perf_counter() < deadline:
            issued += 1
            outcome = await target.call(body, stream=False)
            if outcome is not None:
                latencies.append(outcome[0])
                if outcome[1] is not None:
                    overheads.append(float(outcome[1]))

    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
    return Throughput(
        target.name, issued, target.failed - failed_before, seconds, latencies, overheads, cpu
    )


async def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    import aiohttp

    deadline = time.perf_counter() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.perf_counter() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{url}: the process exited with code {process.returncode}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
                    if response.status < 500:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url}: not ready after {timeout_s:g}s")


# -- reporting -----------------------------------------------------------------------------------


def percentiles(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        only = values[0] if values else float("nan")
        return only, only, only
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[89], cuts[98]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ms(value: float) -> str:
    return f"{value:.3f}"


def latency_table(pairs: Sequence[Paired]) -> str:
    rows: list[list[str]] = []
    for pair in pairs:
        direct, keel = percentiles(pair.direct), percentiles(pair.keel)
        added = [k - d for k, d in zip(keel, direct, strict=True)]
        diffs = percentiles(pair.differences)
        rows += [
            [f"{pair.label}: direct to fake", *map(ms, direct), ms(statistics.fmean(pair.direct))],
            [f"{pair.label}: through Keel", *map(ms, keel), ms(statistics.fmean(pair.keel))],
            [f"{pair.label}: added (Keel - direct)", *map(ms, added), ""],
            [f"{pair.label}: paired difference", *map(ms, diffs), ""],
            [f"{pair.label}: x-keel-overhead-ms", *map(ms, percentiles(pair.overheads)), ""],
        ]
    n = min(len(pair.direct) for pair in pairs)
    return render(
        f"Latency at concurrency 1, ms ({n}+ pairs each, direct and Keel interleaved)",
        ["", "p50", "p90", "p99", "mean"],
        rows,
    )


def throughput_table(runs: Sequence[Throughput], concurrency: int) -> str:
    rows = []
    for run in runs:
        p50, p90, p99 = percentiles(run.latencies)
        rows.append(
            [
                run.label,
                str(run.requests),
                str(run.failed),
                f"{run.seconds:.2f}",
                f"{run.rps:,.0f}",
                ms(p50),
                ms(p90),
                ms(p99),
                ms(median(run.overheads)) if run.overheads else "-",
            ]
        )
    table = render(
        f"Throughput at concurrency {concurrency}, non-streaming",
        ["", "requests", "failed", "s", "req/s", "p50 ms", "p90 ms", "p99 ms", "overhead p50"],
        rows,
    )
    names = list(runs[0].cpu)
    cpu_rows = [
        [run.label, *(f"{100 * run.cpu[name] / run.seconds:.0f}%" for name in names)]
        for run in runs
    ]
    cpu_rows += [
        [
            f"{run.label}, CPU ms per request",
            *(f"{1000 * run.cpu[name] / max(len(run.latencies), 1):.3f}" for name in names),
        ]
        for run in runs
    ]
    cpu = render("CPU used during those runs (100% = one core)", ["", *names], cpu_rows)
    return f"{table}\n\n{cpu}"


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


# -- the run -------------------------------------------------------------------------------------


@dataclass
class Settings:
    requests: int
    warmup: int
    throughput_requests: int
    concurrency: int
    cap_s: float
    client: str
    py_spy: Path | None


async def measure(
    settings: Settings,
    fake_port: int,
    keel_port: int,
    fake: subprocess.Popen[bytes],
    keel: subprocess.Popen[bytes],
) -> tuple[list[Paired], list[Throughput], int]:
    await wait_ready(f"http://{HOST}:{keel_port}/readyz", keel, 90)
    client_class = CLIENTS[settings.client]
    path = "/v1/chat/completions"
    direct = Target("direct to fake", f"http://{HOST}:{fake_port}{path}", client_class(1))
    via = Target("through Keel", f"http://{HOST}:{keel_port}{path}", client_class(1))
    plain = (request_body("gpt-4o-mini", False), request_body("bench-model", False))
    streamed = (request_body("gpt-4o-mini", True), request_body("bench-model", True))
    try:
        for stream, bodies in ((False, plain), (True, streamed)):
            await interleaved(direct, via, bodies, stream, settings.warmup, settings.cap_s)
        if direct.failed or via.failed:
            raise RuntimeError(f"warm-up failed: {direct.failed} direct, {via.failed} via Keel")
        pairs = [
            await interleaved(direct, via, bodies, stream, settings.requests, settings.cap_s)
            for stream, bodies in ((False, plain), (True, streamed))
        ]
    finally:
        await direct.client.aclose()
        await via.client.aclose()

    runs: list[Throughput] = []
    c = settings.concurrency
    pids: dict[str, int | None] = {"client": None, "fake upstream": fake.pid, "Keel": keel.pid}
    direct_c = Target("direct to fake", direct.url, client_class(c))
    via_c = Target("through Keel", via.url, client_class(c))
    try:
        warmup = max(settings.warmup, 2 * c)
        await throughput(direct_c, plain[0], warmup, c, settings.cap_s, pids)
        runs.append(
            await throughput(
                direct_c, plain[0], settings.throughput_requests, c, settings.cap_s, pids
            )
        )
        await throughput(via_c, plain[1], warmup, c, settings.cap_s, pids)
        profiler = start_py_spy(settings.py_spy, keel.pid)
        try:
            runs.append(
                await throughput(
                    via_c, plain[1], settings.throughput_requests, c, settings.cap_s, pids
                )
            )
        finally:
            if profiler is not None:
                stop_process(profiler, signal.SIGINT, 60)
    finally:
        await direct_c.client.aclose()
        await via_c.client.aclose()
    return pairs, runs, via.answered + via_c.answered


def start_py_spy(output: Path | None, pid: int) -> subprocess.Popen[bytes] | None:
    if output is None:
        return None
    binary = shutil.which("py-spy")
    if binary is None:
        print("py-spy is not installed (pip install py-spy); not profiling", file=sys.stderr)
        return None
    fmt = {".json": "speedscope", ".txt": "raw"}.get(output.suffix, "flamegraph")
    args = [binary, "record", "--pid", str(pid), "--output", str(output), "--format", fmt]
    # Each sample pauses Keel briefly (the stacks are exact; --nonblocking ones come out garbled
    # under this load), so the req/s of a profiled run reads a little low.
    process = subprocess.Popen(
        [*args, "--rate", "100"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    time.sleep(0.5)
    return process


def count_records(database: Path) -> tuple[int, int, int]:
    """Rows in request_records: all, streamed, and not 200."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        total, streamed, failed = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(stream), 0), COALESCE(SUM(status_code != 200), 0) "
            "FROM request_records"
        ).fetchone()
    return int(total), int(streamed), int(failed)


def write_config(path: Path, fake_port: int) -> None:
    path.write_text(
        "local_models: {chat: false, embeddings: false}\n"
        "models:\n"
        "  - id: bench-model\n"
        "    provider: openai\n"
        "    model: gpt-4o-mini\n"
        f"    api_base: http://{HOST}:{fake_port}/v1\n"
        "    api_key: sk-bench\n",
        encoding="utf-8",
    )


def run(settings: Settings) -> int:
    children = Children()
    with tempfile.TemporaryDirectory(prefix="keel-bench-") as tmp:
        workdir = Path(tmp)
        home = workdir / "home"
        config = workdir / "keel.yaml"
        keel_log = workdir / "keel.log"
        try:
            fake_port, keel_port = free_port(), free_port()
            fake = children.start(
                [sys.executable, __file__, "--fake-upstream", str(fake_port)],
                stdin=subprocess.DEVNULL,
            )
            write_config(config, fake_port)
            with keel_log.open("wb") as log:
                keel = children.start(
                    [
                        *keel_command(),
                        "serve",
                        "--config",
                        str(config),
                        "--host",
                        HOST,
                        "--port",
                        str(keel_port),
                    ],
                    env=keel_environment(home),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            print(
                f"fake upstream on :{fake_port}, Keel (pid {keel.pid}) on :{keel_port}, "
                f"client {settings.client}, {os.cpu_count()} CPUs, "
                f"load average {os.getloadavg()[0]:.2f}",
                flush=True,
            )
            started = time.perf_counter()
            try:
                pairs, runs, answered = run_fast(
                    measure(settings, fake_port, keel_port, fake, keel)
                )
            except RuntimeError as exc:
                print(f"benchmark failed: {exc}\n--- Keel log ---\n{log_tail(keel_log)}")
                return 1
            measured_s = time.perf_counter() - started

            before_stop = count_records(home / "keel.db")[0]
            stop_started = time.perf_counter()
            code = stop_process(keel, signal.SIGINT, 60)
            stop_s = time.perf_counter() - stop_started
            rows, streamed, not_ok = count_records(home / "keel.db")

            print()
            print(latency_table(pairs))
            print()
            print(throughput_table(runs, settings.concurrency))
            print()
            print(
                render(
                    "Request records (SQLite request_records, counted after a graceful stop)",
                    ["", "count"],
                    [
                        ["requests Keel answered (whole run, warm-up included)", str(answered)],
                        ["rows before the stop", str(before_stop)],
                        ["rows after SIGINT", str(rows)],
                        ["of which streamed / not 200", f"{streamed} / {not_ok}"],
                        ["lost (answered - rows)", str(answered - rows)],
                        ["Keel exit code / shutdown s", f"{code} / {stop_s:.2f}"],
                    ],
                )
            )
            plain, keel_run = pairs[0], runs[-1]
            added = [
                k - d
                for k, d in zip(percentiles(plain.keel), percentiles(plain.direct), strict=True)
            ]
            print()
            print("Targets (non-streaming, concurrency 1 and 64):")
            print(
                f"  added latency p50 {added[0]:.3f} ms <= {TARGET_ADDED_P50_MS:g} ms: "
                f"{verdict(added[0] <= TARGET_ADDED_P50_MS)}"
            )
            print(
                f"  added latency p99 {added[2]:.3f} ms <= {TARGET_ADDED_P99_MS:g} ms: "
                f"{verdict(added[2] <= TARGET_ADDED_P99_MS)}"
            )
            print(
                f"  throughput {keel_run.rps:,.0f} req/s >= {TARGET_RPS:,.0f} req/s: "
                f"{verdict(keel_run.rps >= TARGET_RPS)}"
            )
            print(f"  request records lost: {answered - rows}: {verdict(answered == rows)}")
            print(f"(measured in {measured_s:.1f} s)")
            if settings.py_spy is not None and settings.py_spy.exists():
                print(f"py-spy profile of Keel (concurrency run): {settings.py_spy}")
            return 0
        finally:
            children.stop_all()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="pairs per c=1 phase")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured pairs first")
    parser.add_argument("--throughput-requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--cap", type=float, default=45.0, help="max seconds per phase")
    parser.add_argument("--client", choices=sorted(CLIENTS), default="aiohttp")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="OUT",
        help="profile Keel during the concurrency run (.svg flamegraph, .txt raw, .json)",
    )
    parser.add_argument("--fake-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.fake_upstream is not None:
        serve_fake_upstream(args.fake_upstream)
        return 0
    if args.quick:
        args.requests, args.warmup, args.throughput_requests = 300, 50, 3000
    # SIGTERM unwinds like Ctrl-C, through the cleanup of the child processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    settings = Settings(
        requests=args.requests,
        warmup=args.warmup,
        throughput_requests=args.throughput_requests,
        concurrency=args.concurrency,
        cap_s=args.cap,
        client=args.client,
        py_spy=args.py_spy,
    )
    try:
        return run(settings)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
