"""Keel: an open-source LLMOps platform.

The server lives in `keel.server`, the Python client in `keel.sdk`; importing `keel` imports
neither. `keel.start_run` (experiment tracking) loads `keel.tracking` on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keel.tracking.runs import start_run

__version__ = "0.1.0"

__all__ = ["__version__", "start_run"]


def __getattr__(name: str) -> Any:
    if name == "start_run":
        from keel.tracking.runs import start_run

        return start_run
    raise AttributeError(f"module 'keel' has no attribute {name!r}")
