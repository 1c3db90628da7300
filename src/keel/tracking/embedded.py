"""The embedded backend: runs written straight to the local database (`KEEL_HOME`, or
`KEEL_DATABASE_URL`) through the same `TrackingStore` the server uses. No server needed.

Errors come out as `keel.sdk.KeelAPIError`, with the status and field the server would have
answered, so code handles one exception whichever backend it runs against.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from keel.config import Settings
from keel.errors import KeelError
from keel.tracking.store import LogBatch, Provenance, RunOwner, TrackingStore

__all__ = ["EmbeddedTracking"]

T = TypeVar("T")


@contextmanager
def _as_api_errors() -> Iterator[None]:
    try:
        yield
    except KeelError as exc:
        from keel.sdk import KeelAPIError

        raise KeelAPIError(
            exc.status_code,
            exc.message,
            error_type=exc.error_type,
            param=exc.param,
            code=exc.code,
        ) from None


class EmbeddedTracking:
    def __init__(
        self, store: TrackingStore, *, owner: RunOwner, heartbeat_interval_s: float = 15.0
    ) -> None:
        self.store = store
        self.owner = owner
        self.heartbeat_interval_s = heartbeat_interval_s

    @classmethod
    def from_settings(cls, settings: Settings) -> EmbeddedTracking:
        from keel.store.database import Database
        from keel.tracking.artifacts import build_artifact_store

        database = Database(settings.effective_database_url)
        database.migrate()
        config = settings.tracking
        store = TrackingStore(
            database,
            build_artifact_store(config.artifacts, settings.home_dir),
            stale_after_s=config.stale_after_s,
        )
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "local"
        return cls(
            store,
            owner=RunOwner(name=user, environment="local"),
            heartbeat_interval_s=config.heartbeat_interval_s,
        )

    @classmethod
    def from_environment(cls) -> EmbeddedTracking:
        """From keel.yaml (`KEEL_CONFIG`) and the `KEEL_*` variables, like `keel serve`."""
        from keel.config_loading import load_settings

        return cls.from_settings(load_settings())

    def _call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with _as_api_errors():
            return method(*args, **kwargs)

    def create_run(
        self,
        experiment: str,
        *,
        name: str | None,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        provenance: Mapping[str, Any],
    ) -> dict[str, Any]:
        return self._call(
            self.store.create_run,
            experiment,
            self.owner,
            name=name,
            params=params,
            tags=tags,
            provenance=Provenance(**provenance),
        )

    def write(self, batches: list[LogBatch]) -> None:
        self._call(self.store.write_batches, batches)

    def finish_run(self, run_id: str, status: str, error: str | None = None) -> dict[str, Any]:
        return self._call(self.store.finish_run, run_id, status, error)

    def upload_artifact(
        self, run_id: str, name: str, data: bytes, media_type: str | None = None
    ) -> dict[str, Any]:
        return self._call(self.store.add_artifact, run_id, name, data, media_type)

    def download_artifact(self, run_id: str, name: str) -> bytes:
        data, _ = self._call(self.store.artifact, run_id, name)
        return data

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
        return self._call(
            self.store.add_input,
            run_id,
            kind,
            ref,
            created_by=self.owner.name,
            name=name,
            version=version,
            relation=relation,
            output=output,
        )

    def log_model_config(
        self, run_id: str, config: Mapping[str, Any], *, name: str
    ) -> dict[str, Any]:
        return self._call(
            self.store.log_model_config, run_id, config, name=name, created_by=self.owner.name
        )

    def get_run(self, run_id: str) -> dict[str, Any]:
        return self._call(self.store.get_run, run_id)

    def list_runs(
        self, *, experiment: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        return self._call(self.store.list_runs, experiment=experiment, status=status, limit=limit)

    def compare(self, run_ids: list[str]) -> dict[str, Any]:
        return self._call(self.store.compare, run_ids)

    def metric_history(self, run_id: str, key: str) -> list[dict[str, Any]]:
        return self._call(self.store.metric_history, run_id, key)

    def list_experiments(self) -> list[dict[str, Any]]:
        return self._call(self.store.list_experiments)

    def close(self) -> None:
        self.store.database.dispose()
