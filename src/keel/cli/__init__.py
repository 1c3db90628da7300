"""The `keel` command. Thin: server commands run the server, the rest call the Python SDK."""

from keel.cli.app import app, main

__all__ = ["app", "main"]
