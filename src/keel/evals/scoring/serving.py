"""Scoring on the server (`POST /v1/keel/scorers/score`): the judge and embedding models are
called through the app's own OpenAI-compatible routes with the caller's credentials, so keys,
quotas, guardrails and records apply to them as to any other call."""

from __future__ import annotations

import asyncio
from importlib.metadata import entry_points
from typing import Any

import httpx
from fastapi import Request

from keel.errors import InvalidRequestError, KeelError, UpstreamBadResponseError
from keel.evals.scoring.base import ChatFn, EmbedFn, Score, ScoreInput
from keel.evals.scoring.resolve import BUILTIN_SCORERS, ENTRY_POINT_GROUP, resolve_scorer

__all__ = ["score_on_server", "scorer_catalog"]

_CONCURRENCY = 8
_JUDGE_MAX_TOKENS = 128
# The caller's credentials; the acting-as headers count only in open mode, as anywhere.
_FORWARDED = ("authorization", "x-api-key", "x-keel-team", "x-keel-actor", "x-keel-roles")


def scorer_catalog() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for kind, (options, _, summary) in BUILTIN_SCORERS.items():
        names = [name for name in options.model_fields if name != "name"]
        found.append({"type": kind, "source": "builtin", "options": names, "summary": summary})
    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
        found.append(
            {"type": point.name, "source": "entry_point", "options": [], "summary": point.value}
        )
    return found


def _self_calls(request: Request) -> tuple[httpx.AsyncClient, ChatFn, EmbedFn]:
    headers = {key: request.headers[key] for key in _FORWARDED if key in request.headers}
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=request.app, client=("127.0.0.1", 0)),
        base_url="http://127.0.0.1",
        headers=headers,
        timeout=600,
    )

    async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await client.post(path, json=body)
        data: Any = response.json()
        if response.status_code >= 400:
            error = data.get("error", {}) if isinstance(data, dict) else {}
            raise KeelError(
                f"the scorer's model call failed: {error.get('message', response.text[:200])}",
                status_code=response.status_code,
                error_type=error.get("type"),
                code=error.get("code"),
            )
        if not isinstance(data, dict):
            raise UpstreamBadResponseError("the scorer's model answered with no JSON object")
        return data

    async def chat(model: str, messages: list[dict[str, Any]]) -> str:
        body = {"model": model, "messages": messages, "temperature": 0}
        data = await post("/v1/chat/completions", body | {"max_tokens": _JUDGE_MAX_TOKENS})
        content = data["choices"][0]["message"].get("content")
        return content if isinstance(content, str) else ""

    async def embed(model: str, texts: list[str]) -> list[list[float]]:
        data = await post("/v1/embeddings", {"model": model, "input": texts})
        rows = sorted(data["data"], key=lambda item: item["index"])
        return [list(map(float, row["embedding"])) for row in rows]

    return client, chat, embed


async def score_on_server(
    request: Request, spec: str | dict[str, Any], cases: list[dict[str, Any]]
) -> dict[str, Any]:
    client, chat, embed = _self_calls(request)
    async with client:
        scorer = resolve_scorer(spec, chat=chat, embed=embed, allow_import=False)
        inputs = [ScoreInput(**case) for case in cases]
        if scorer.needs_expected:
            for number, case in enumerate(inputs, start=1):
                if case.expected is None:
                    raise InvalidRequestError(
                        f"case {number} has no expected value; the {scorer.name} scorer needs one",
                        param="cases",
                    )
        gate = asyncio.Semaphore(_CONCURRENCY)

        async def one(number: int, case: ScoreInput) -> Score:
            async with gate:
                try:
                    return await scorer.score(case)
                except KeelError:
                    raise
                except Exception as exc:  # a custom scorer's own failure is not the server's
                    raise InvalidRequestError(
                        f"scorer {scorer.name!r} failed on case {number}: "
                        f"{type(exc).__name__}: {exc}",
                        param="cases",
                    ) from None

        # Every case finishes before the client closes, even when one of them failed.
        results = await asyncio.gather(
            *(one(n, case) for n, case in enumerate(inputs, start=1)), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        scores = [result for result in results if isinstance(result, Score)]
        figures = scorer.aggregate(scores, inputs)
    return {
        "object": "scores",
        "scorer": scorer.name,
        "scores": [{"value": s.value, "passed": s.passed, "detail": s.detail} for s in scores],
        "aggregate": figures,
    }
