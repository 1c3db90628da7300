"""The CLI starts instantly: importing it, and running a command that talks to a server, loads
none of the heavy parts (torch, sentence-transformers, Presidio, llama.cpp, the server)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = (
    "torch",
    "sentence_transformers",
    "presidio_analyzer",
    "llama_cpp",
    "keel.server",
    "fastapi",
    "uvicorn",
    "sqlalchemy",
)


def test_importing_the_cli_loads_nothing_heavy() -> None:
    code = (
        "import sys, keel.cli\n"
        f"heavy = [name for name in {HEAVY!r} if name in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""
