"""Feedback and quality from Python: `Keel(...).feedback` and `Keel(...).quality`.

keel.feedback(request_id, thumbs="up")                        # a user's thumbs
keel.feedback(request_id, label="spam", expected="ham", source="code", name="triage")
keel.feedback.list(request_id)                                # everything said about it
keel.quality("support-bot", window="24h", by="registry_version")

Each call is one HTTP request; errors raise `KeelAPIError` (its `param` names the field).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

__all__ = ["FeedbackAPI", "QualityAPI"]

RequestFn = Callable[..., dict[str, Any]]


class FeedbackAPI:
    """`POST /v1/keel/feedback` when called, `GET /v1/keel/feedback` through `list`."""

    def __init__(self, request: RequestFn) -> None:
        self._request = request

    def __call__(
        self,
        request_id: str,
        *,
        thumbs: str | None = None,
        label: str | None = None,
        expected: str | None = None,
        score: float | None = None,
        correction: str | None = None,
        comment: str | None = None,
        source: str = "human",
        name: str = "default",
    ) -> dict[str, Any]:
        """Feedback on one request; the same (request, source, name) again replaces it. The
        answer is the stored feedback, with `replaced` saying whether it replaced some."""
        body: dict[str, Any] = {"request_id": request_id, "source": source, "name": name}
        given = {
            "thumbs": thumbs,
            "label": label,
            "expected": expected,
            "score": score,
            "correction": correction,
            "comment": comment,
        }
        body.update({field: value for field, value in given.items() if value is not None})
        return self._request("POST", "/v1/keel/feedback", json=body)

    def list(self, request_id: str) -> list[dict[str, Any]]:
        """Every piece of feedback on `request_id`, oldest first."""
        answer = self._request("GET", "/v1/keel/feedback", params={"request_id": request_id})
        data: list[dict[str, Any]] = answer["data"]
        return data


class QualityAPI:
    """`GET /v1/keel/quality`, when called."""

    def __init__(self, request: RequestFn) -> None:
        self._request = request

    def __call__(
        self,
        model: str,
        window: str = "24h",
        *,
        by: str | None = None,
        registry_version: str | None = None,
        deployment: str | None = None,
        source: str | None = None,
        end: datetime | str | None = None,
    ) -> dict[str, Any]:
        """Accuracy, precision, recall and F1 of `model` over `window` (`30m`, `24h`, `7d`):
        `overall`, and `groups` per registry version or deployment with `by`."""
        params: dict[str, Any] = {"model": model, "window": window}
        optional = {
            "by": by,
            "registry_version": registry_version,
            "deployment": deployment,
            "source": source,
            "end": end.isoformat() if isinstance(end, datetime) else end,
        }
        params.update({name: value for name, value in optional.items() if value is not None})
        return self._request("GET", "/v1/keel/quality", params=params)
