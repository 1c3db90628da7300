"""Alerts from Python: `Keel(...).alerts`.

keel.alerts.list()                      # every rule's current state
keel.alerts.list(state="firing")
keel.alerts.history(rule="errors-high") # transitions, newest first
keel.alerts.deliveries(rule="errors-high")
keel.alerts.rules.list()
keel.alerts.rules.create({"name": "errors-high", "metric": "error_rate", "threshold": 0.05,
                          "window": "5m", "for": "2m", "severity": "critical"})
keel.alerts.rules.get("errors-high")
keel.alerts.rules.disable("errors-high"); keel.alerts.rules.enable("errors-high")
keel.alerts.rules.delete("errors-high")

Errors raise `KeelAPIError` (a bad rule: status 400, `param` names the field). Importing this
module never imports the server.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

__all__ = ["AlertRulesAPI", "AlertsAPI"]

RequestFn = Callable[..., dict[str, Any]]
Rows = list[dict[str, Any]]
PREFIX = "/v1/keel/alerts"


def _params(**values: Any) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


class AlertRulesAPI:
    def __init__(self, request: RequestFn) -> None:
        self._request_fn = request

    def _path(self, name: str) -> str:
        return f"{PREFIX}/rules/{quote(name, safe='')}"

    def list(self) -> Rows:
        data: Rows = self._request_fn("GET", f"{PREFIX}/rules")["data"]
        return data

    def create(self, rule: Mapping[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """Create a rule from a mapping and/or keyword fields (`for_=` stands for `for`)."""
        body = {**(rule or {}), **fields}
        if "for_" in body:
            body["for"] = body.pop("for_")
        return self._request_fn("POST", f"{PREFIX}/rules", json=body)

    def get(self, name: str) -> dict[str, Any]:
        return self._request_fn("GET", self._path(name))

    def delete(self, name: str) -> dict[str, Any]:
        """`{"name": ..., "deleted": True}`; a keel.yaml rule cannot be deleted (409)."""
        return self._request_fn("DELETE", self._path(name))

    def disable(self, name: str) -> dict[str, Any]:
        return self._request_fn("POST", f"{self._path(name)}/disable")

    def enable(self, name: str) -> dict[str, Any]:
        return self._request_fn("POST", f"{self._path(name)}/enable")


class AlertsAPI:
    """The alert routes. `request` is the client's `_request(method, path, **kwargs)`."""

    def __init__(self, request: RequestFn) -> None:
        self._request_fn = request
        self.rules = AlertRulesAPI(request)

    def list(self, *, state: str | None = None) -> Rows:
        """Each rule's current state (`inactive`, `pending`, `firing` or `resolved`)."""
        data: Rows = self._request_fn("GET", PREFIX, params=_params(state=state))["data"]
        return data

    def history(
        self, *, rule: str | None = None, limit: int = 100, before_id: int | None = None
    ) -> Rows:
        """State transitions, newest first."""
        params = _params(rule=rule, limit=limit, before_id=before_id)
        data: Rows = self._request_fn("GET", f"{PREFIX}/history", params=params)["data"]
        return data

    def deliveries(
        self,
        *,
        rule: str | None = None,
        history_id: int | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> Rows:
        """Each notifier's outcome for each transition, newest first."""
        params = _params(rule=rule, history_id=history_id, limit=limit, before_id=before_id)
        data: Rows = self._request_fn("GET", f"{PREFIX}/deliveries", params=params)["data"]
        return data
