"""Failover: how long after a deployment starts failing does traffic run only on the healthy one?

One process, loopback only: an aiohttp fake upstream serving two upstream models, and Keel's app
(in-process, driven through its ASGI interface) with a group of two deployments on them. Steady
traffic runs at a fixed concurrency; part-way through, one deployment starts answering 503. The
bench reports the time from that moment to the last request that still touched the failing
deployment, how many requests touched it, and whether any client saw an error.

    python bench/failover.py [--concurrency 16] [--seconds 4] [--threshold 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time

import httpx
import orjson
from aiohttp import web

from keel.config import Settings
from keel.server import create_app

COMPLETION = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "ok"},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


class Upstream:
    def __init__(self) -> None:
        self.failing: set[str] = set()

    async def chat(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        if body["model"] in self.failing:
            error = {"error": {"message": "overloaded", "type": "server_error"}}
            return web.Response(
                status=503, body=orjson.dumps(error), content_type="application/json"
            )
        return web.Response(body=orjson.dumps(COMPLETION), content_type="application/json")


async def run(concurrency: int, seconds: float, threshold: int) -> None:
    upstream = Upstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", upstream.chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    base = f"http://127.0.0.1:{port}/v1"

    with tempfile.TemporaryDirectory() as home:
        settings = Settings.model_validate(
            {
                "home": home,
                "local_models": {"chat": False, "embeddings": False},
                "groups": [
                    {
                        "id": "chat",
                        "strategy": "weighted",
                        "deployments": [
                            {"id": "east", "provider": "openai", "model": "east", "api_base": base},
                            {"id": "west", "provider": "openai", "model": "west", "api_base": base},
                        ],
                    }
                ],
                "routing": {
                    "retry": {"backoff_initial_s": 0.01},
                    "circuit": {"failure_threshold": threshold, "window_s": 10, "cooldown_s": 60},
                },
            }
        )
        keel = create_app(settings)
        body = orjson.dumps({"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
        log: list[
            tuple[float, int, str, int, float]
        ] = []  # (sent, status, deployment, attempts, ms)
        flip_at = time.perf_counter() + seconds / 3
        stop_at = time.perf_counter() + seconds
        async with keel.router.lifespan_context(keel):
            transport = httpx.ASGITransport(app=keel)
            async with httpx.AsyncClient(transport=transport, base_url="http://keel") as client:

                async def worker() -> None:
                    while (sent := time.perf_counter()) < stop_at:
                        if sent >= flip_at:
                            upstream.failing.add("east")
                        response = await client.post(
                            "/v1/chat/completions",
                            content=body,
                            headers={"content-type": "application/json"},
                        )
                        log.append(
                            (
                                sent,
                                response.status_code,
                                response.headers.get("x-keel-deployment", ""),
                                int(response.headers.get("x-keel-attempts", "0")),
                                (time.perf_counter() - sent) * 1000,
                            )
                        )

                await asyncio.gather(*(worker() for _ in range(concurrency)))
                states = {
                    d["id"]: d["state"]
                    for d in (await client.get("/v1/keel/deployments")).json()["data"]
                }
    await runner.cleanup()

    after = [entry for entry in log if entry[0] >= flip_at]
    touched = [entry for entry in after if entry[3] > 1 or entry[2] == "east"]
    errors = [entry for entry in log if entry[1] != 200]
    before = [entry for entry in log if entry[0] < flip_at]
    last_touch_ms = (max(e[0] for e in touched) - flip_at) * 1000 if touched else 0.0
    print(f"requests: {len(log)} ({len(before)} before the failure, {len(after)} after)")
    print(f"client-visible errors: {len(errors)}")
    print(f"requests after the failure that touched the failing deployment: {len(touched)}")
    print(f"time from failure to traffic fully on the healthy deployment: {last_touch_ms:.1f} ms")
    if touched:
        print(
            f"latency of those requests, median: {statistics.median(e[4] for e in touched):.2f} ms"
        )
    print(f"latency before the failure, median: {statistics.median(e[4] for e in before):.2f} ms")
    steady = [e for e in after if e not in touched]
    if steady:
        print(f"latency after failover, median: {statistics.median(e[4] for e in steady):.2f} ms")
    print(f"circuit states at the end: {states}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--threshold", type=int, default=5, help="circuit failure_threshold")
    args = parser.parse_args()
    asyncio.run(run(args.concurrency, args.seconds, args.threshold))


if __name__ == "__main__":
    main()
