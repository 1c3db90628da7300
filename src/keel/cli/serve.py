from __future__ import annotations

from pathlib import Path

import typer
import uvicorn

from keel.cli.output import fail
from keel.config import load_settings
from keel.errors import ConfigError
from keel.server import create_app

__all__ = ["serve"]


def serve(
    host: str | None = typer.Option(None, help="Address to bind (default 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port to bind (default 8080)."),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="keel.yaml with models, providers and prices."
    ),
) -> None:
    """Start the Keel server."""
    try:
        settings = load_settings(config, host=host, port=port)
        app = create_app(settings, own_process=True)
    except ConfigError as exc:
        fail(str(exc))
    server = settings.server
    typer.echo(
        f"Keel on http://{server.host}:{server.port}  (state: {settings.home_dir}, "
        f"database: {settings.effective_database_url.split(':', 1)[0]})"
    )
    uvicorn.run(
        app,
        host=server.host,
        port=server.port,
        log_level=server.log_level,
        access_log=False,
        timeout_graceful_shutdown=30,
        # The peer address is what IP allow-lists and the audit log trust: never let a header
        # (X-Forwarded-For from any local process) rewrite it.
        proxy_headers=False,
    )
