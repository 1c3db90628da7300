"""The Keel HTTP server: `create_app(settings)` assembles it; `keel serve` runs it."""

from keel.server.app import create_app

__all__ = ["create_app"]
