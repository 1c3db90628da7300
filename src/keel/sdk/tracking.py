"""Experiment tracking from Python against a Keel server: `Keel(...).tracking`.

keel.tracking.start_run("search-assistant", params={"k": 5})   # a live Run (see keel.tracking)
keel.tracking.runs(experiment="search-assistant")               # a RunList (HTML in Jupyter)
keel.tracking.compare([run_a, run_b])                           # a Comparison
keel.tracking.download_artifact(run_id, "report.html")

Every method is one HTTP call (a run's metric points go many to a call, from its background
thread); errors raise `KeelAPIError` naming the field. The same methods back the embedded
store (`keel.tracking.embedded`), so a `Run` works the same against either.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import orjson

if TYPE_CHECKING:
    from keel.tracking.runs import Run
    from keel.tracking.store import LogBatch
    from keel.tracking.views import Comparison, RunList, RunView

__all__ = ["TrackingAPI"]

RequestFn = Callable[..., dict[str, Any]]
RUNS = "/v1/keel/runs"


def _seg(value: str) -> str:
    return quote(value, safe="")


class TrackingAPI:
    """The tracking routes. `request` is the client's `_request(method, path, **kwargs)`;
    `http` (its httpx.Client) fetches artifacts as bytes."""

    def __init__(
        self,
        request: RequestFn,
        *,
        http: httpx.Client | None = None,
        heartbeat_interval_s: float = 15.0,
    ) -> None:
        self._request = request
        self._http = http
        self.heartbeat_interval_s = heartbeat_interval_s

    # -- the friendly surface -------------------------------------------------------------------

    def start_run(
        self,
        experiment: str,
        *,
        name: str | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> Run:
        from keel.tracking.runs import start_run

        return start_run(experiment, name=name, params=params, tags=tags, client=self)

    def experiments(self) -> list[dict[str, Any]]:
        return self.list_experiments()

    def runs(
        self, experiment: str | None = None, *, status: str | None = None, limit: int = 100
    ) -> RunList:
        from keel.tracking.views import RunList

        return RunList(self.list_runs(experiment=experiment, status=status, limit=limit))

    def run(self, run_id: str) -> RunView:
        from keel.tracking.views import RunView

        return RunView(self.get_run(run_id))

    def comparison(self, run_ids: Iterable[str]) -> Comparison:
        from keel.tracking.views import Comparison

        return Comparison(self.compare(list(run_ids)))

    # -- the backend a Run writes through (keel.tracking.runs.TrackingBackend) ------------------

    def create_experiment(self, name: str, description: str | None = None) -> dict[str, Any]:
        body = {"name": name, "description": description}
        return self._request("POST", "/v1/keel/experiments", json=body)

    def list_experiments(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self._request("GET", "/v1/keel/experiments")["data"]
        return data

    def create_run(
        self,
        experiment: str,
        *,
        name: str | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        provenance: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"experiment": experiment, "name": name}
        body |= {"params": dict(params or {}), "tags": dict(tags or {})}
        body |= dict(provenance or {})
        return self._request("POST", RUNS, json=body)

    def write(self, batches: list[LogBatch]) -> None:
        for batch in batches:
            body = {
                "metrics": [
                    {"key": key, "value": value, "step": step, "timestamp_ms": ts}
                    for key, value, step, ts in batch.metrics
                ],
                "params": batch.params,
                "tags": batch.tags,
            }
            # orjson: a batch holds up to 20,000 points, and the stdlib encoder is the slow part.
            self._request(
                "POST",
                f"{RUNS}/{_seg(batch.run_id)}/log",
                content=orjson.dumps(body),
                headers={"content-type": "application/json"},
            )

    def log(
        self,
        run_id: str,
        *,
        metrics: Iterable[Mapping[str, Any]] = (),
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """One log call: metric points as {key, value, step?, timestamp_ms?}."""
        body = {"metrics": list(metrics), "params": dict(params or {}), "tags": dict(tags or {})}
        return self._request("POST", f"{RUNS}/{_seg(run_id)}/log", json=body)

    def finish_run(
        self, run_id: str, status: str = "finished", error: str | None = None
    ) -> dict[str, Any]:
        body = {"status": status, "error": error}
        return self._request("POST", f"{RUNS}/{_seg(run_id)}/finish", json=body)

    def upload_artifact(
        self, run_id: str, name: str, data: bytes, media_type: str | None = None
    ) -> dict[str, Any]:
        body = {
            "name": name,
            "content_base64": base64.b64encode(data).decode("ascii"),
            "media_type": media_type,
        }
        return self._request("POST", f"{RUNS}/{_seg(run_id)}/artifacts", json=body)

    def download_artifact(self, run_id: str, name: str) -> bytes:
        if self._http is None:
            raise RuntimeError("download_artifact needs the client's HTTP connection")
        from keel.sdk.client import KeelConnectionError, _api_error

        path = f"{RUNS}/{_seg(run_id)}/artifacts/{quote(name, safe='/')}"
        try:
            response = self._http.get(path)
        except httpx.TransportError as exc:
            raise KeelConnectionError(f"cannot reach Keel: {exc}") from exc
        if response.status_code >= 400:
            raise _api_error(response.status_code, response.content)
        return response.content

    def add_input(
        self,
        run_id: str,
        kind: str,
        ref: str,
        *,
        name: str | None = None,
        version: int | None = None,
        relation: str | None = None,
        output: bool = False,
    ) -> dict[str, Any]:
        body = {"kind": kind, "ref": ref, "name": name, "version": version}
        body |= {"relation": relation, "output": output}
        return self._request("POST", f"{RUNS}/{_seg(run_id)}/inputs", json=body)

    def log_model_config(
        self, run_id: str, config: Mapping[str, Any], *, name: str
    ) -> dict[str, Any]:
        body = {"name": name, "config": dict(config)}
        return self._request("POST", f"{RUNS}/{_seg(run_id)}/model-configs", json=body)

    def get_run(self, run_id: str) -> dict[str, Any]:
        return self._request("GET", f"{RUNS}/{_seg(run_id)}")

    def list_runs(
        self, *, experiment: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"limit": limit}
        if experiment is not None:
            query["experiment"] = experiment
        if status is not None:
            query["status"] = status
        data: list[dict[str, Any]] = self._request("GET", RUNS, params=query)["data"]
        return data

    def compare(self, run_ids: list[str]) -> dict[str, Any]:
        return self._request("GET", f"{RUNS}/compare", params=[("ids", i) for i in run_ids])

    def metric_history(self, run_id: str, key: str) -> list[dict[str, Any]]:
        found = self._request("GET", f"{RUNS}/{_seg(run_id)}/metrics", params={"key": key})
        data: list[dict[str, Any]] = found["data"]
        return data
