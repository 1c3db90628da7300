"""Tracked runs from Python: `keel.start_run(...)` and the `Run` it returns.

    with keel.start_run(experiment="search-assistant", params={"k": 5}) as run:
        for step, batch in enumerate(batches):
            run.log_metric("loss", train(batch), step=step)
        run.log_artifact("report.html")

Metrics, params and tags are queued in memory and written by a background thread, so logging
costs the caller's loop a few microseconds a point. Where they go:

- `client=` given (a `keel.sdk.Keel`, or any backend): there;
- else `KEEL_BASE_URL` (or `KEEL_URL`) set: that Keel server, with `KEEL_API_KEY`;
- else the embedded store: the local `KEEL_HOME` database, no server needed.

A run ends `finished` when its with-block ends, `failed` when the block raises, and `failed`
when the process exits with the run still open (atexit). A process killed outright stops its
heartbeat, and the run reads as `failed` ("lost: ...") once it has been silent for
`tracking.stale_after_s`.
"""

from __future__ import annotations

import atexit
import json
import logging
import mimetypes
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol

from keel.tracking.store import LogBatch, MetricPoint
from keel.tracking.views import Comparison, RunList, RunView

__all__ = [
    "Run",
    "TrackingBackend",
    "compare_runs",
    "get_run",
    "list_runs",
    "start_run",
]

log = logging.getLogger("keel.tracking")

RunStatus = Literal["finished", "failed"]
_MAX_KEY = 255
# A remote request carries at most this many points; the embedded store takes a batch whole.
_CHUNK = 20_000
# Past this many queued points the caller writes them itself: memory stays bounded when the
# store is slower than the loop feeding it.
_MAX_PENDING = 2_000_000
_WAKE_AT = 50_000


class TrackingBackend(Protocol):
    """What a run writes through: the embedded store (`keel.tracking.embedded`) or a Keel
    server (`keel.sdk.tracking.TrackingAPI`). Both take and return the same JSON shapes."""

    heartbeat_interval_s: float

    def create_run(
        self,
        experiment: str,
        *,
        name: str | None,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        provenance: Mapping[str, Any],
    ) -> dict[str, Any]: ...

    def write(self, batches: list[LogBatch]) -> None: ...

    def finish_run(self, run_id: str, status: str, error: str | None = None) -> dict[str, Any]: ...

    def upload_artifact(
        self, run_id: str, name: str, data: bytes, media_type: str | None = None
    ) -> dict[str, Any]: ...

    def download_artifact(self, run_id: str, name: str) -> bytes: ...

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
    ) -> dict[str, Any]: ...

    def log_model_config(
        self, run_id: str, config: Mapping[str, Any], *, name: str
    ) -> dict[str, Any]: ...

    def get_run(self, run_id: str) -> dict[str, Any]: ...

    def list_runs(
        self, *, experiment: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]: ...

    def compare(self, run_ids: list[str]) -> dict[str, Any]: ...

    def metric_history(self, run_id: str, key: str) -> list[dict[str, Any]]: ...

    def list_experiments(self) -> list[dict[str, Any]]: ...


class Run:
    """A live run. Safe to log from several threads; each method names the field it refuses."""

    def __init__(self, backend: TrackingBackend, record: Mapping[str, Any]) -> None:
        self._backend = backend
        self.id: str = record["id"]
        self.experiment: str = record["experiment"]
        self.name: str | None = record.get("name")
        self.status: str = record.get("status", "running")
        self._metrics: deque[MetricPoint] = deque()
        self._params: dict[str, Any] = {}
        self._tags: dict[str, str] = {}
        self._steps: dict[str, int] = {}
        self._known_keys: set[str] = set()
        self._lock = threading.Lock()  # params, tags and step counters
        self._flushing = threading.Lock()  # one writer at a time, in queue order
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._failure: Exception | None = None
        self._last_write = time.monotonic()
        self._closed = False
        self._flusher = threading.Thread(
            target=self._flush_loop, name=f"keel-run-{self.id}", daemon=True
        )
        self._flusher.start()
        _OPEN_RUNS.add(self)

    # --- logging -------------------------------------------------------------------------------

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        """One point. `step` defaults to the key's previous step plus one (0 first)."""
        if key not in self._known_keys:
            self._check_key(key, "metric")
        if type(value) is not float:
            value = _as_number(key, value)
        if value - value != 0.0:  # NaN or infinity: neither survives JSON nor means a score
            raise ValueError(f"metric {key!r}: {value} is not a finite number")
        if self._closed:
            raise RuntimeError(f"run {self.id} has ended; start another run to log more")
        steps = self._steps
        if step is None:
            step = steps.get(key, -1) + 1
        elif type(step) is not int:
            step = _as_step(key, step)
        steps[key] = step
        metrics = self._metrics
        metrics.append((key, value, step, time.time_ns() // 1_000_000))
        if len(metrics) >= _WAKE_AT:
            self._wake.set()
            if len(metrics) >= _MAX_PENDING:
                self.flush()

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self.log_metric(key, value, step)

    def log_param(self, key: str, value: Any) -> None:
        self.log_params({key: value})

    def log_params(self, params: Mapping[str, Any]) -> None:
        checked = {}
        for key, value in params.items():
            self._check_key(key, "param")
            try:
                text = json.dumps(value, allow_nan=False)
            except (TypeError, ValueError):
                raise ValueError(
                    f"param {key!r}: values must be JSON data (text, numbers, booleans, lists, "
                    f"objects), not {type(value).__name__}"
                ) from None
            if len(text) > 6000:
                raise ValueError(f"param {key!r}: the value is over 6000 characters")
            checked[key] = value
        self._ensure_open()
        with self._lock:
            self._params.update(checked)

    def set_tag(self, key: str, value: str) -> None:
        self.set_tags({key: value})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key in tags:
            self._check_key(key, "tag")
        self._ensure_open()
        with self._lock:
            self._tags.update({key: str(value) for key, value in tags.items()})

    # --- artifacts and lineage (written at once: they are rare and the caller wants the id) --

    def log_artifact(
        self, path: str | os.PathLike[str], name: str | None = None
    ) -> list[dict[str, Any]]:
        """A file, or every file under a directory (named `name/relative/path`)."""
        source = Path(path)
        if source.is_dir():
            base = name or source.name
            return [
                self._upload(file, f"{base}/{file.relative_to(source).as_posix()}")
                for file in sorted(source.rglob("*"))
                if file.is_file()
            ]
        if not source.is_file():
            raise FileNotFoundError(f"artifact {str(source)!r}: no such file")
        return [self._upload(source, name or source.name)]

    def _upload(self, file: Path, name: str) -> dict[str, Any]:
        self._ensure_open()
        media_type = mimetypes.guess_type(file.name)[0]
        return self._backend.upload_artifact(self.id, name, file.read_bytes(), media_type)

    def log_dict(self, obj: Any, name: str) -> dict[str, Any]:
        """`obj` as a JSON artifact."""
        try:
            data = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"artifact {name!r}: not JSON data ({exc})") from None
        self._ensure_open()
        return self._backend.upload_artifact(self.id, name, data, "application/json")

    def log_text(self, text: str, name: str) -> dict[str, Any]:
        self._ensure_open()
        return self._backend.upload_artifact(self.id, name, text.encode(), "text/plain")

    def log_input(
        self, kind: str, ref: str, *, name: str | None = None, version: int | None = None
    ) -> dict[str, Any]:
        """Link a content-addressed input (a prompt or dataset version: its digest or id) to
        this run and into the registry's lineage graph, as `kind:ref` → `run:<id>`."""
        return self._backend.add_input(self.id, kind, ref, name=name, version=version)

    def link(
        self, kind: str, entity_id: str, *, relation: str | None = None, output: bool = False
    ) -> dict[str, Any]:
        """A lineage link between this run and any entity: it fed the run (`used_by`), or with
        `output=True` the run produced it (`produced`)."""
        return self._backend.add_input(self.id, kind, entity_id, relation=relation, output=output)

    def log_model_config(
        self, config: Mapping[str, Any], name: str | None = None
    ) -> dict[str, Any]:
        """Store a model configuration content-addressed (the same content gets the same
        digest and version) and link it to this run. Returns name, digest and version."""
        if not isinstance(config, Mapping):
            raise ValueError("model config: a mapping (dict) of JSON data")
        label = name or str(config.get("model") or "model")
        return self._backend.log_model_config(self.id, config, name=label)

    def use(self, thing: Any, *, kind: str | None = None) -> dict[str, Any]:
        """Record that this run used `thing`: a dict is a model configuration; anything with
        `kind` (or `kind=`) and a `digest` or `id` (a prompt or dataset version) is an input."""
        if isinstance(thing, Mapping):
            return self.log_model_config(thing)
        found_kind = kind or getattr(thing, "kind", None)
        ref = getattr(thing, "digest", None) or getattr(thing, "id", None)
        if not isinstance(found_kind, str) or not isinstance(ref, str):
            raise ValueError(
                "use(): pass a model configuration dict, or an object with a kind and a "
                "digest or id (or give kind=)"
            )
        version = getattr(thing, "version", None)
        return self.log_input(
            found_kind,
            ref,
            name=getattr(thing, "name", None),
            version=version if isinstance(version, int) else None,
        )

    # --- ending --------------------------------------------------------------------------------

    def flush(self) -> None:
        """Write everything logged so far; raises what the store refused, if anything."""
        self._write_pending(heartbeat=False)
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    def finish(self, status: RunStatus = "finished", error: str | None = None) -> None:
        """Flush, then end the run. Ending it again is a no-op."""
        if status not in ("finished", "failed"):
            raise ValueError(f"status: finished or failed, not {status!r}")
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        self._wake.set()
        self._flusher.join()
        try:
            self.flush()
        except Exception as exc:
            status, error = "failed", error or f"logging failed: {exc}"
            raise
        finally:
            record = self._backend.finish_run(self.id, status, error)
            self.status = record.get("status", status)
            _OPEN_RUNS.discard(self)

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        if exc is None:
            self.finish("finished")
        else:
            self.finish("failed", f"{kind.__name__ if kind else 'error'}: {exc}"[:2000])

    # --- reading back --------------------------------------------------------------------------

    def info(self) -> RunView:
        """The run as stored (after a flush): params, tags, metric summaries, artifacts."""
        if not self._closed:
            self.flush()
        return RunView(self._backend.get_run(self.id))

    def metric_history(self, key: str) -> list[dict[str, Any]]:
        if not self._closed:
            self.flush()
        return self._backend.metric_history(self.id, key)

    def _repr_html_(self) -> str:
        return self.info()._repr_html_()

    def __repr__(self) -> str:
        return f"Run(id={self.id!r}, experiment={self.experiment!r}, status={self.status!r})"

    # --- plumbing ------------------------------------------------------------------------------

    def _check_key(self, key: Any, what: str) -> None:
        if not isinstance(key, str) or not key or len(key) > _MAX_KEY or "\x00" in key:
            raise ValueError(f"{what} key {key!r}: a name of 1 to {_MAX_KEY} characters")
        if what == "metric":
            self._known_keys.add(key)

    def _ensure_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"run {self.id} has ended; start another run to log more")

    def _flush_loop(self) -> None:
        interval = min(1.0, self._backend.heartbeat_interval_s)
        while not self._stopping.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            if self._stopping.is_set():
                return
            due = time.monotonic() - self._last_write >= self._backend.heartbeat_interval_s
            try:
                self._write_pending(heartbeat=due)
            except Exception as exc:  # kept for the caller's next flush() / finish()
                log.warning("run %s: writing logged values failed: %s", self.id, exc)

    def _write_pending(self, *, heartbeat: bool) -> None:
        with self._flushing:
            metrics = self._metrics
            points = [metrics.popleft() for _ in range(len(metrics))]
            with self._lock:
                params, self._params = self._params, {}
                tags, self._tags = self._tags, {}
            if not (points or params or tags or heartbeat):
                return
            batches = [
                LogBatch(self.id, points[start : start + _CHUNK])
                for start in range(0, len(points), _CHUNK)
            ] or [LogBatch(self.id)]
            batches[0].params, batches[0].tags = params, tags
            try:
                self._backend.write(batches)
            except Exception as exc:
                if _refused(exc):
                    # The store will refuse the same values again: report, don't retry.
                    self._failure = exc
                    return
                # Unreachable for now: put everything back, in order, and try again later.
                metrics.extendleft(reversed(points))
                with self._lock:
                    self._params = params | self._params
                    self._tags = tags | self._tags
                raise
            self._last_write = time.monotonic()


def _refused(exc: Exception) -> bool:
    status = getattr(exc, "status_code", None)
    return isinstance(exc, ValueError) or (isinstance(status, int) and 400 <= status < 500)


def _as_number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not _is_real(value):
        raise ValueError(f"metric {key!r}: {value!r} is not a number")
    return float(value)


def _is_real(value: Any) -> bool:
    import numbers

    return isinstance(value, numbers.Real)


def _as_step(key: str, step: Any) -> int:
    import numbers

    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        raise ValueError(f"metric {key!r}: step {step!r} is not an integer")
    return int(step)


# --- module functions ------------------------------------------------------------------------

_OPEN_RUNS: weakref.WeakSet[Run] = weakref.WeakSet()
_DEFAULT: list[TrackingBackend] = []
_DEFAULT_LOCK = threading.Lock()


def _exiting() -> None:
    """The process is exiting with runs still open: they did not finish."""
    for run in list(_OPEN_RUNS):
        try:
            run.finish("failed", "the process exited before the run finished")
        except Exception as exc:
            log.warning("run %s: could not mark it failed at exit: %s", run.id, exc)


atexit.register(_exiting)


def _backend(client: Any) -> TrackingBackend:
    if client is not None:
        tracking = getattr(client, "tracking", None)
        found: TrackingBackend = tracking if tracking is not None else client
        return found
    with _DEFAULT_LOCK:
        if not _DEFAULT:
            base_url = os.environ.get("KEEL_BASE_URL") or os.environ.get("KEEL_URL")
            if base_url:
                from keel.sdk import Keel

                _DEFAULT.append(Keel(base_url, api_key=os.environ.get("KEEL_API_KEY")).tracking)
            else:
                from keel.tracking.embedded import EmbeddedTracking

                _DEFAULT.append(EmbeddedTracking.from_environment())
        return _DEFAULT[0]


def start_run(
    experiment: str,
    *,
    name: str | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    client: Any = None,
) -> Run:
    """Start a run of `experiment` (created on first use). Use it as a context manager, or
    call `run.finish()`."""
    if not isinstance(experiment, str) or not experiment.strip():
        raise ValueError("experiment: give the experiment's name")
    from keel.tracking.environment import provenance

    backend = _backend(client)
    clean_tags = {str(key): str(value) for key, value in (tags or {}).items()}
    record = backend.create_run(
        experiment,
        name=name,
        params=dict(params or {}),
        tags=clean_tags,
        provenance=provenance(),
    )
    return Run(backend, record)


def get_run(run_id: str, *, client: Any = None) -> RunView:
    return RunView(_backend(client).get_run(run_id))


def list_runs(
    experiment: str | None = None,
    *,
    status: str | None = None,
    limit: int = 100,
    client: Any = None,
) -> RunList:
    return RunList(_backend(client).list_runs(experiment=experiment, status=status, limit=limit))


def compare_runs(run_ids: Iterable[str], *, client: Any = None) -> Comparison:
    return Comparison(_backend(client).compare(list(run_ids)))
