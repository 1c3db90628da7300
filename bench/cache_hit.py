"""A cache hit end to end on loopback: a real Keel server process answering a repeated
`temperature: 0` request from its exact cache, against the same request answered upstream
(a lean fake OpenAI server) and against calling that fake directly.

    python bench/cache_hit.py [--requests 2000]

Reuses the fake upstream of gateway_overhead.py and the helpers in _processes.py.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).parent))
from gateway_overhead import (
    HOST,
    Children,
    free_port,
    keel_command,
    keel_environment,
    run_fast,
    wait_ready,
)


def body(temperature: float) -> bytes:
    return orjson.dumps(
        {
            "model": "bench-model",
            "temperature": temperature,
            "messages": [{"role": "user", "content": "How do I reset my password?"}],
        }
    )


async def timed(session: aiohttp.ClientSession, url: str, payload: bytes) -> tuple[float, str]:
    started = time.perf_counter()
    async with session.post(url, data=payload, headers={"content-type": "application/json"}) as r:
        await r.read()
        assert r.status == 200, r.status
        return time.perf_counter() - started, r.headers.get("x-keel-cache", "")


async def measure(keel_url: str, fake_url: str, requests: int) -> None:
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        chat = "/v1/chat/completions"
        cached, uncached = body(0), body(0.5)
        await timed(session, keel_url + chat, cached)  # the miss that fills the cache
        await asyncio.sleep(0.2)
        for _ in range(200):
            await timed(session, keel_url + chat, cached)
            await timed(session, fake_url + chat, uncached)
        hits, misses, direct = [], [], []
        outcomes = set()
        for _ in range(requests):
            seconds, outcome = await timed(session, keel_url + chat, cached)
            hits.append(seconds)
            outcomes.add(outcome)
            misses.append((await timed(session, keel_url + chat, uncached))[0])
            direct.append((await timed(session, fake_url + chat, uncached))[0])
    assert outcomes == {"hit"}, outcomes

    def row(name: str, values: list[float]) -> str:
        ordered = sorted(values)
        p50 = statistics.median(ordered) * 1000
        p99 = ordered[int(len(ordered) * 0.99) - 1] * 1000
        return f"{name:<34} p50 {p50:6.3f} ms   p99 {p99:6.3f} ms"

    print(f"{requests} requests of each kind, interleaved, concurrency 1, loopback\n")
    print(row("Keel, exact cache hit", hits))
    print(row("Keel, uncached (upstream call)", misses))
    print(row("fake upstream, direct", direct))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    children = Children()
    try:
        with tempfile.TemporaryDirectory(prefix="keel-bench-") as tmp:
            fake_port, keel_port = free_port(), free_port()
            config = Path(tmp) / "keel.yaml"
            config.write_text(
                "local_models: {chat: false, embeddings: false}\n"
                "models:\n"
                f"  - {{id: bench-model, provider: openai, model: gpt-4o-mini,"
                f" api_base: 'http://{HOST}:{fake_port}/v1', api_key: sk-bench}}\n"
            )
            bench = Path(__file__).with_name("gateway_overhead.py")
            fake = children.start([sys.executable, str(bench), "--fake-upstream", str(fake_port)])
            keel = children.start(
                [*keel_command(), "serve", "--config", str(config), "--port", str(keel_port)],
                env=keel_environment(Path(tmp) / "home"),
            )
            keel_url, fake_url = f"http://{HOST}:{keel_port}", f"http://{HOST}:{fake_port}"

            async def go() -> None:
                await wait_ready(keel_url + "/readyz", keel, 60)
                await wait_ready(fake_url + "/v1/models", fake, 10)
                await measure(keel_url, fake_url, args.requests)

            run_fast(go())
    finally:
        children.stop_all()


if __name__ == "__main__":
    main()
