"""Evaluation: scorers, eval suites, leaderboards and model/prompt search.

    import keel.evals
    result = keel.evals.run_suite("suite.yaml")      # a leaderboard; see docs/evaluation.md
    found = keel.evals.run_search("search.yaml")     # the Pareto front and the chosen config

Importing this package is cheap: the runner, numpy and the server load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keel.evals.api import run_suite
    from keel.evals.search import run_search

__all__ = ["run_search", "run_suite"]


def __getattr__(name: str) -> Any:
    if name == "run_suite":
        from keel.evals.api import run_suite

        return run_suite
    if name == "run_search":
        from keel.evals.search import run_search

        return run_search
    raise AttributeError(f"module 'keel.evals' has no attribute {name!r}")
