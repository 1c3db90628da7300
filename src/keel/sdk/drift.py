"""Drift from Python: `Keel(...).drift`.

keel.drift("support-bot@production", window="24h")               # compute and store a report
keel.drift("support-bot", reference="benchmark")                  # against the registry's run
keel.drift("gpt-4o-mini", window="24h", reference_window="7d")    # against the week before
keel.drift.history("support-bot", limit=20)                       # stored reports, newest first

Windows are durations (30m, 24h, 7d) or "START/END" ISO-8601 ranges. Errors raise
`KeelAPIError`. Importing this module never imports the server.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import quote

__all__ = ["DriftAPI"]

RequestFn = Callable[..., dict[str, Any]]
PREFIX = "/v1/keel/drift"


def _path(model: str) -> str:
    # "/" stays: registry names may hold one, and the route takes the rest of the path.
    return f"{PREFIX}/{quote(model, safe='/@')}"


def _text(value: datetime | str | None) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


class DriftAPI:
    """The drift routes; calling the object computes a report."""

    def __init__(self, request: RequestFn) -> None:
        self._request_fn = request

    def __call__(
        self,
        model: str,
        *,
        window: str = "24h",
        reference: str = "window",
        reference_window: str | None = None,
        until: datetime | str | None = None,
    ) -> dict[str, Any]:
        """Compute drift for `model` (`name`, `name@alias` or a gateway model id), store the
        report and return it: `drifted`, `metrics` (flat numbers) and `checks`."""
        params: dict[str, Any] = {"window": window, "reference": reference}
        if reference_window is not None:
            params["reference_window"] = reference_window
        if until is not None:
            params["until"] = _text(until)
        return self._request_fn("GET", _path(model), params=params)

    def history(
        self, model: str, *, limit: int = 100, since: datetime | str | None = None
    ) -> list[dict[str, Any]]:
        """Stored reports for `model`, newest first."""
        params: dict[str, Any] = {"limit": limit}
        if since is not None:
            params["since"] = _text(since)
        data: list[dict[str, Any]] = self._request_fn(
            "GET", f"{_path(model)}/history", params=params
        )["data"]
        return data
