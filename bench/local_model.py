"""Tokens/s of the bundled local chat model, called in-process versus through a Keel server.

Direct: `llama_cpp.Llama(model_path=<bundled SmolLM2-135M-Instruct GGUF>, n_ctx=2048)` and
`create_chat_completion(..., stream=True)` in this process. Through Keel: the same prompt and
settings streamed over HTTP from a real `keel serve` (default configuration, so the bundled local
models, its own KEEL_HOME in a temporary directory). Both use llama-cpp-python's default thread
count, as Keel does when `local_models.n_threads` is unset.

A run is timed from the request to the last token; tokens are the chunks that carry text (what
Keel counts as completion tokens: its usage chunk, asked for with
`stream_options.include_usage`). Runs alternate direct/Keel one at a time, never together: both
would share the same CPU cores.

    python bench/local_model.py               # 5 runs each
    python bench/local_model.py --runs 9 --max-tokens 256
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from _processes import _die_with_parent, free_port, keel_command, render, stop_process

HOST = "127.0.0.1"
MODEL_ID = "smollm2-135m-instruct"
TARGET_RATIO = 0.95
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {
        "role": "user",
        "content": "Write a short story about a lighthouse keeper who finds a message in a "
        "bottle. Describe the sea, the weather and what the message says.",
    },
]


@dataclass
class Run:
    path: str
    tokens: int
    ttft_s: float
    seconds: float  # request to last token
    text: str

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def _text_of(chunk: dict[str, Any]) -> str:
    return "".join(
        (choice.get("delta") or {}).get("content") or "" for choice in chunk.get("choices") or ()
    )


def time_stream(path: str, started: float, chunks: Iterable[dict[str, Any]]) -> Run:
    """Time a stream of chat.completion.chunk dicts; `usage` (if any) gives the token count."""
    pieces: list[str] = []
    first = last = None
    counted = 0
    usage: dict[str, Any] | None = None
    for chunk in chunks:
        text = _text_of(chunk)
        if text:
            last = time.perf_counter()
            first = first or last
            counted += 1
            pieces.append(text)
        if chunk.get("usage"):
            usage = chunk["usage"]
    if first is None or last is None:
        raise RuntimeError(f"{path}: the stream carried no text")
    tokens = int(usage["completion_tokens"]) if usage else counted
    return Run(path, tokens, first - started, last - started, "".join(pieces))


def run_direct(llama: Any, max_tokens: int) -> Run:
    started = time.perf_counter()
    chunks = llama.create_chat_completion(
        messages=MESSAGES, max_tokens=max_tokens, temperature=0, seed=0, stream=True
    )
    return time_stream("direct", started, chunks)


def sse_chunks(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        chunk = orjson.loads(data)
        if "error" in chunk:
            raise RuntimeError(f"Keel stream error: {chunk['error']}")
        yield chunk
    raise RuntimeError("Keel's stream ended without [DONE]")


def run_keel(client: httpx.Client, base: str, max_tokens: int) -> Run:
    body = {
        "model": MODEL_ID,
        "messages": MESSAGES,
        "max_tokens": max_tokens,
        "temperature": 0,
        "seed": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        # temperature 0 is cacheable: every run must generate, not replay the first answer.
        "cache": {"no_cache": True, "no_store": True},
    }
    started = time.perf_counter()
    with client.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            response.read()
            raise RuntimeError(f"Keel answered {response.status_code}: {response.text[:300]}")
        return time_stream("Keel", started, sse_chunks(response.iter_lines()))


# -- the Keel process ----------------------------------------------------------------------------


def wait_ready(
    client: httpx.Client, base: str, process: subprocess.Popen[bytes], timeout_s: float
) -> None:
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Keel exited with code {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if client.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"Keel was not ready after {timeout_s:g}s")


def warm_up_keel(client: httpx.Client, base: str, max_tokens: int) -> None:
    """Load both bundled models now, so background loading never overlaps a timed run."""
    run_keel(client, base, max_tokens)
    embedding = client.post(
        f"{base}/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": "warm-up"}
    )
    if embedding.status_code != 200:
        print(f"(embeddings warm-up answered {embedding.status_code}; continuing)")


# -- reporting -----------------------------------------------------------------------------------


def report(runs: Sequence[tuple[int, Run]], threads: int) -> None:
    rows = [
        [
            str(number),
            run.path,
            str(run.tokens),
            f"{run.ttft_s * 1000:.1f}",
            f"{run.seconds:.3f}",
            f"{run.tokens_per_s:.1f}",
        ]
        for number, run in runs
    ]
    print(
        render(
            "Runs (in the order taken)", ["run", "path", "tokens", "ttft ms", "s", "tok/s"], rows
        )
    )
    direct = [run for _, run in runs if run.path == "direct"]
    keel = [run for _, run in runs if run.path == "Keel"]
    summary = []
    for name, group in (("direct (in-process)", direct), ("through Keel (HTTP)", keel)):
        summary.append(
            [
                name,
                f"{statistics.median(r.tokens_per_s for r in group):.1f}",
                f"{min(r.tokens_per_s for r in group):.1f}",
                f"{max(r.tokens_per_s for r in group):.1f}",
                f"{statistics.median(r.ttft_s for r in group) * 1000:.1f}",
                f"{statistics.median(r.tokens for r in group):g}",
            ]
        )
    print()
    print(
        render(
            f"Tokens/s, {MODEL_ID}, llama.cpp threads {threads}",
            ["", "median tok/s", "min", "max", "median ttft ms", "tokens"],
            summary,
        )
    )
    ratio = statistics.median(r.tokens_per_s for r in keel) / statistics.median(
        r.tokens_per_s for r in direct
    )
    same_text = len({run.text for _, run in runs}) == 1
    verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
    print()
    print(f"Keel / direct (medians): {ratio:.1%}   target >= {TARGET_RATIO:.0%}: {verdict}")
    print(f"same text from every run: {'yes' if same_text else 'NO'}")


# -- the run -------------------------------------------------------------------------------------


def run(runs: int, max_tokens: int) -> int:
    from llama_cpp import Llama

    from keel.providers._bundled import bundled_chat_model_path

    model_path = bundled_chat_model_path()
    print(f"model {model_path.name}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    with (
        tempfile.TemporaryDirectory(prefix="keel-bench-") as tmp,
        httpx.Client(trust_env=False, timeout=120) as client,
    ):
        env = {key: value for key, value in os.environ.items() if not key.startswith("KEEL_")}
        env["KEEL_HOME"] = str(Path(tmp) / "home")
        port = free_port()
        base = f"http://{HOST}:{port}"
        log_path = Path(tmp) / "keel.log"
        with log_path.open("wb") as log:
            keel = subprocess.Popen(
                [*keel_command(), "serve", "--host", HOST, "--port", str(port)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches this process only; it stops Keel
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        try:
            started = time.perf_counter()
            try:
                wait_ready(client, base, keel, 150)
                warm_up_keel(client, base, max_tokens)
            except (RuntimeError, httpx.HTTPError) as exc:
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
                print(f"Keel failed to start: {exc}\n--- Keel log ---\n{tail}")
                return 1
            print(
                f"Keel (pid {keel.pid}) ready and warmed up in "
                f"{time.perf_counter() - started:.1f} s"
            )

            llama = Llama(model_path=str(model_path), n_ctx=2048, verbose=False)
            run_direct(llama, max_tokens)  # warm-up, as Keel's was
            taken: list[tuple[int, Run]] = []
            for number in range(1, runs + 1):
                # Alternate who goes first; never run the two at the same time.
                order = ("direct", "Keel") if number % 2 else ("Keel", "direct")
                for path in order:
                    if path == "direct":
                        taken.append((number, run_direct(llama, max_tokens)))
                    else:
                        taken.append((number, run_keel(client, base, max_tokens)))
            print()
            report(taken, int(llama.n_threads))
            return 0
        finally:
            stop_process(keel, signal.SIGINT, 30)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each (default 5)")
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, through the cleanup of the Keel process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return run(args.runs, args.max_tokens)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
