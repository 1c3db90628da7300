from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer
from rich.console import Console

from keel.sdk import KeelAPIError, KeelConnectionError

__all__ = ["console", "fail", "reported_errors"]

console = Console()


def fail(message: str, code: int = 1) -> NoReturn:
    typer.secho(f"Error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@contextmanager
def reported_errors() -> Iterator[None]:
    """Errors of an SDK call end the command with their message (and the field at fault)."""
    try:
        yield
    except KeelConnectionError as exc:
        fail(f"{exc}\nIs the server running? Start it with: keel serve")
    except KeelAPIError as exc:
        where = f" (field: {exc.param})" if exc.param else ""
        fail(f"{exc}{where}")
    except OSError as exc:
        fail(str(exc) or type(exc).__name__)
