"""What a run records about where it ran: the caller's git commit and whether the tree had
uncommitted changes, the Python version, a digest of the installed packages, and the host."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import socket
import subprocess
from typing import Any

__all__ = ["git_state", "packages_digest", "provenance"]


def git_state(directory: str | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the repository around `directory` (the working directory); (None,
    None) outside a repository or without git."""
    where = directory or os.getcwd()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return None, None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None, None
    dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    return commit.stdout.strip() or None, dirty


@functools.cache
def packages_digest() -> str:
    """sha256 over the sorted `name==version` lines of every installed distribution: two runs
    with the same digest ran on the same packages."""
    from importlib import metadata

    lines = sorted(
        {
            f"{(dist.metadata['Name'] or '').lower()}=={dist.version}"
            for dist in metadata.distributions()
        }
    )
    return "sha256:" + hashlib.sha256("\n".join(lines).encode()).hexdigest()


def provenance() -> dict[str, Any]:
    commit, dirty = git_state()
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "python_version": platform.python_version(),
        "packages_digest": packages_digest(),
        "host": socket.gethostname()[:255] or None,
    }
