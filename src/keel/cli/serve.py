"""`keel serve`: the server in this process, with a banner that says what it is running on.

The app's start-up (database, identity, models) runs here, before uvicorn takes the socket, so
a mistake found while starting (a database that does not exist, a JWKS file without keys) ends
the command with one line naming the setting, never uvicorn's traceback.

The server, uvicorn and the database layer are imported when `serve` runs, never when the CLI
starts: every other command would pay for them.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from keel.cli.output import fail
from keel.errors import ConfigError

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

    from keel.config import Settings

__all__ = ["serve"]


def serve(
    host: str | None = typer.Option(None, help="Address to bind (default 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port to bind (default 8080)."),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="keel.yaml with models, providers and prices."
    ),
) -> None:
    """Start the Keel server."""
    import uvicorn

    from keel.config_loading import load_settings
    from keel.server import create_app

    try:
        settings = load_settings(config, host=host, port=port)
        app = create_app(settings, own_process=True)
    except ConfigError as exc:
        fail(str(exc))
    server = settings.server
    server_config = uvicorn.Config(
        app,
        host=server.host,
        port=server.port,
        log_level=server.log_level,
        access_log=False,
        timeout_graceful_shutdown=30,
        # The peer address is what IP allow-lists and the audit log trust: never let a header
        # (X-Forwarded-For from any local process) rewrite it.
        proxy_headers=False,
        # Started and stopped by `_KeelServer` around uvicorn, where its errors can be reported.
        lifespan="off",
    )
    try:
        _server_class()(server_config, app, settings).run()
    except ConfigError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass  # Ctrl-C (SIGINT) is how a foreground server is stopped, as uvicorn.run treats it


def _server_class() -> Callable[[uvicorn.Config, FastAPI, Settings], uvicorn.Server]:
    import uvicorn

    from keel.governance.bootstrap import ADMIN_KEY_FILE

    class KeelServer(uvicorn.Server):
        def __init__(self, config: uvicorn.Config, app: FastAPI, settings: Settings) -> None:
            super().__init__(config)
            self.app = app
            self.settings = settings

        async def serve(self, sockets: list[socket.socket] | None = None) -> None:
            # uvicorn's own `serve` with the app's start-up and shutdown inside it: a signal
            # that stopped the server is raised again only once the services have shut down
            # (records flushed), as it is when uvicorn runs the lifespan itself.
            key_file = self.settings.home_dir / ADMIN_KEY_FILE
            key_file_before = key_file.exists()
            with self.capture_signals():
                async with self.app.router.lifespan_context(self.app):
                    typer.echo(banner(self.settings, key_file, created=not key_file_before))
                    await self._serve(sockets)

    return KeelServer


def banner(settings: Settings, key_file: Path, *, created: bool) -> str:
    """Where the server listens, where its state lives, which database it uses, whether it
    asks for credentials, and where an admin key it wrote waits to be read."""
    from keel.governance.access import auth_required

    server = settings.server
    required = auth_required(settings.auth, server.host)
    if not required:
        auth = "off: a loopback bind, every local caller is the admin"
    elif settings.auth.admin_key is not None:
        auth = "on: the admin key is auth.admin_key (KEEL_ADMIN_KEY)"
    else:
        auth = "on: send a key as `Authorization: Bearer` (KEEL_API_KEY for the CLI and SDK)"
    lines = [
        f"Keel on http://{_authority(server.host, server.port)}",
        f"  state:     {settings.home_dir}",
        f"  database:  {_database(settings)}",
        f"  auth:      {auth}",
    ]
    if required and key_file.exists():
        when = "created now" if created else "left from an earlier start"
        lines.append(
            f"  admin key: {key_file} ({when}; read it once, keep it safe, delete the file)"
        )
    return "\n".join(lines)


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _database(settings: Settings) -> str:
    """The backend and where it is, never the URL's credentials."""
    from sqlalchemy.engine import make_url

    url = make_url(settings.effective_database_url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        return f"sqlite ({url.database})"
    place = f"{url.host or 'localhost'}:{url.port}" if url.port else (url.host or "localhost")
    return f"{backend} ({place}/{url.database or ''})"
