"""What authentication and quotas add to a request, with Redis counters (guardrails off).

Two measurements, interleaved so machine noise hits both sides alike:

* steps: the governance work one inference call waits for, in process — authenticate the
  bearer key from the snapshot, authorize the route, admit the model, collect the limits that
  apply (user, team, model: five counters) and reserve them in Redis (one EVALSHA); settling
  runs after the answer, off the path, and is not timed;
* end to end: the same chat request through the whole app (in process, ASGI, a fake upstream
  that answers at once) in open mode without quotas, and with a key whose team has limits,
  counters in Redis, interleaved. The difference of the medians is what governance adds to a
  call, the audit entry and the settling it schedules included.

    python bench/auth_quota.py [--rounds 3000] [--redis redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from keel.config import Settings
from keel.identity import Actor
from keel.server import create_app

ADMIN = Actor("bench", frozenset({"admin"}), kind="bootstrap")
CHAT = {
    "model": "bench-model",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "How do I reset my password on the mobile app?"}],
}
ANSWER = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 0,
    "model": "bench-model",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13},
}


def millis(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p99 = ordered[int(len(ordered) * 0.99) - 1]
    return f"p50 {p50 * 1e3:7.3f} ms   p99 {p99 * 1e3:7.3f} ms"


def settings_for(home: Path, upstream: str, redis_url: str | None, governed: bool) -> Settings:
    raw: dict[str, Any] = {
        "home": str(home),
        "local_models": {"chat": False, "embeddings": False},
        "cache": {"enabled": False},
        "models": [
            {"id": "bench-model", "provider": "openai", "api_base": upstream, "api_key": "sk-x"}
        ],
        "server": {"record_flush_interval_s": 0.05},
    }
    if governed:
        raw["redis_url"] = redis_url
        raw["auth"] = {"required": True}
        raw["quotas"] = {"models": {"bench-model": {"tpm": 10**9}}}
    else:
        raw["quotas"] = {"enabled": False}
    return Settings.model_validate(raw)


async def fake_upstream() -> tuple[str, Any]:
    from aiohttp import web

    async def chat(_: web.Request) -> web.Response:
        return web.json_response(ANSWER)

    app = web.Application()
    app.router.add_post("/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return f"http://127.0.0.1:{port}", runner


async def provision(app: Any) -> str:
    """A team with limits, a user in it and a key: the realistic case, five counters."""
    keel = app.state.keel
    limits = {"rpm": 10**8, "tpm": 10**10, "usd_per_day": 10**6}
    name = f"bench-{time.time_ns()}"
    keel.directory.create_team(name, limits=limits)
    keel.directory.create_user(name, role="developer", team=name, limits={"rpm": 10**8})
    _, secret = keel.directory.create_key(name, name="bench", created_by=ADMIN)
    await keel.access.refresh()
    return str(secret)


async def run(rounds: int, redis_url: str) -> None:
    upstream, runner = await fake_upstream()
    with tempfile.TemporaryDirectory() as open_home, tempfile.TemporaryDirectory() as gov_home:
        plain = create_app(settings_for(Path(open_home), upstream, None, governed=False))
        governed = create_app(settings_for(Path(gov_home), upstream, redis_url, governed=True))
        async with (
            plain.router.lifespan_context(plain),
            governed.router.lifespan_context(governed),
        ):
            for app in (plain, governed):
                # Loading the PII analyzer in the background would compete for the GIL.
                if app.state.keel.warmup is not None:
                    await app.state.keel.warmup
            secret = await provision(governed)
            keel = governed.state.keel
            headers = {"authorization": f"Bearer {secret}"}

            async def steps() -> float:
                started = time.perf_counter()
                actor = await keel.access.authenticate(headers, "127.0.0.1")
                keel.access.authorize(actor, "inference", "POST /v1/chat/completions")
                keel.policy.admit_model(actor, "bench-model")
                group = keel.router.resolve("bench-model", "chat")
                limits = keel.policy.limits_for(actor, group.id, None)
                reservation = await keel.quotas.reserve(limits, tokens=76, usd=0.0)
                elapsed = time.perf_counter() - started
                await keel.quotas.settle(reservation, tokens=13, usd=0.0)  # off the path
                return elapsed

            for _ in range(300):  # warm-up
                await steps()
            step_samples = [await steps() for _ in range(rounds)]

            transports = {
                "open mode, no quotas": httpx.ASGITransport(app=plain),
                "API key + quotas in Redis": httpx.ASGITransport(app=governed),
            }
            clients = {
                label: httpx.AsyncClient(transport=transport, base_url="http://keel")
                for label, transport in transports.items()
            }
            end_to_end: dict[str, list[float]] = {label: [] for label in clients}
            for _ in range(200):  # warm-up
                for client in clients.values():
                    await client.post("/v1/chat/completions", json=CHAT, headers=headers)
            for _ in range(rounds):
                for label, client in clients.items():
                    started = time.perf_counter()
                    response = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
                    end_to_end[label].append(time.perf_counter() - started)
                    assert response.status_code == 200, response.text
            for client in clients.values():
                await client.aclose()
    await runner.cleanup()

    print(f"governance steps, {rounds} rounds (5 counters, one Redis EVALSHA)")
    print(f"  authenticate + authorize + limits + reserve   {millis(step_samples)}")
    print("end to end, in-process ASGI, fake upstream")
    for label, samples in end_to_end.items():
        print(f"  {label:<28} {millis(samples)}")
    base, gov = (statistics.median(samples) for samples in end_to_end.values())
    print(f"  added by governance (difference of medians)   {(gov - base) * 1e3:7.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    asyncio.run(run(args.rounds, args.redis))


if __name__ == "__main__":
    main()
