"""A local model whose file is missing or cannot be loaded: said once, by name, never retried.

Such a deployment is reported by `/readyz` with the reason (`Provider.unready_reason`), and a
request routed to it fails at once with `model_not_loadable`, which routing never retries on the
same deployment (other deployments and fallbacks are still tried). Putting the file in place
is enough: nothing is remembered about a missing file, and a failed load is tried again once
the file changes.
"""

from __future__ import annotations

from pathlib import Path

from keel.errors import ModelNotLoadableError

__all__ = ["LoadFailure", "model_not_loadable"]


def model_not_loadable(model_id: str, reason: str) -> ModelNotLoadableError:
    return ModelNotLoadableError(f"model {model_id!r}: {reason}")


class LoadFailure:
    """Why loading a model file failed, for as long as the file stays as it was then."""

    def __init__(self) -> None:
        self._reason: str | None = None
        self._signature: tuple[int, int] | None = None

    def note(self, path: Path, reason: str) -> None:
        self._reason, self._signature = reason, _signature(path)

    def reason(self, path: Path) -> str | None:
        if self._reason is None or _signature(path) != self._signature:
            return None
        return self._reason


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_mtime_ns, found.st_size
