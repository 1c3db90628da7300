"""Experiment tracking: experiments, runs, params, metrics, artifacts; datasets and prompts.

    import keel
    with keel.start_run(experiment="search-assistant", params={"k": 5}) as run:
        run.log_metric("accuracy", 0.91, step=3)

Importing this package is cheap: the store, the HTTP client and the server load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keel.tracking.runs import Run, compare_runs, get_run, list_runs, start_run

__all__ = ["Run", "compare_runs", "get_run", "list_runs", "start_run"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from keel.tracking import runs

        return getattr(runs, name)
    raise AttributeError(f"module 'keel.tracking' has no attribute {name!r}")
