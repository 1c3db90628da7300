"""A server's Prometheus metrics from Python: `Keel(...).metrics`.

keel.metrics()                        # every family, parsed: [Metric(name, type, samples), ...]
keel.metrics(prefix="keel_cache")     # the families whose name starts with the prefix
keel.metrics.text()                   # the exposition text as served

Each family is a `prometheus_client` `Metric`: `name` (counters without `_total`), `type`,
`documentation` and `samples`, each with `name`, `labels` and `value`. One replica answers:
behind a load balancer, each call may reach a different one. Errors raise `KeelAPIError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["MetricsAPI"]

PATH = "/metrics"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


class MetricsAPI:
    """`GET /metrics`. `http` is the client's httpx.Client (its base URL and key)."""

    def __init__(self, http: httpx.Client) -> None:
        self._http = http

    def __call__(self, prefix: str | None = None) -> list[Metric]:
        """The parsed metric families, optionally only those whose name starts with `prefix`."""
        from prometheus_client.parser import text_string_to_metric_families

        families = text_string_to_metric_families(self.text())
        return [family for family in families if prefix is None or family.name.startswith(prefix)]

    def text(self, *, openmetrics: bool = False) -> str:
        """The exposition as the server sends it: the Prometheus text format, or OpenMetrics."""
        from keel.sdk.client import KeelConnectionError, _api_error

        headers = {"accept": OPENMETRICS} if openmetrics else {"accept": "text/plain"}
        try:
            response = self._http.get(PATH, headers=headers)
        except httpx.TransportError as exc:
            raise KeelConnectionError(f"cannot reach Keel at {self._http.base_url}: {exc}") from exc
        if response.status_code >= 400:
            raise _api_error(response.status_code, response.content)
        return response.text
