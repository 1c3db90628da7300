from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer
from rich.console import Console

from keel.sdk import KeelAPIError, KeelConnectionError

__all__ = ["console", "fail", "number", "reported_errors"]

console = Console()


def fail(message: str, code: int = 1) -> NoReturn:
    typer.secho(f"Error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def number(value: float) -> str:
    """A number as people write it: integers as integers (`2000000`, never `2e+06`, however
    JSON delivered it), other values in plain decimal notation."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if value.is_integer() and abs(value) < 1e18:
        return str(int(value))
    text = repr(value)
    if "e" in text or "E" in text:
        text = f"{value:.15f}".rstrip("0").rstrip(".")
    return text


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
