"""Generate the command reference in docs/cli.md from the Typer app.

    python scripts/gen_cli_docs.py          # rewrite the generated part of docs/cli.md
    python scripts/gen_cli_docs.py --check  # exit 1 if docs/cli.md is out of date

Only the text between the BEGIN/END markers is generated; the rest of the page is written by
hand. The help is rendered with click's plain formatter at a fixed width (no Rich, no terminal
detection), so the output is the same on every machine.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from keel.cli import app

__all__ = ["BEGIN", "DOC_PATH", "END", "cli_reference", "render_page"]

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
BEGIN = "<!-- BEGIN GENERATED CLI REFERENCE: run `python scripts/gen_cli_docs.py` -->"
END = "<!-- END GENERATED CLI REFERENCE -->"
WIDTH = 100
# Typer's completion options differ with the shell-detection packages installed; they are
# described by hand in docs/cli.md instead.
_SKIPPED_PARAMS = {"install_completion", "show_completion"}


def _help(command: Any, ctx: Any) -> str:
    if hasattr(command, "rich_markup_mode"):
        command.rich_markup_mode = None  # plain click formatting, never Rich
    formatter = ctx.make_formatter()  # width from the context, not from the terminal
    command.format_help(ctx, formatter)
    return str(formatter.getvalue()).rstrip() + "\n"


def cli_reference() -> str:
    """The generated Markdown: the help of `keel` and of each of its commands."""
    # Typer's click objects (recent Typer releases vendor click), reached through the command
    # itself so this works whichever click Typer uses.
    group: Any = typer.main.get_command(app)
    group.params = [param for param in group.params if param.name not in _SKIPPED_PARAMS]
    root = group.context_class(
        group, info_name="keel", terminal_width=WIDTH, max_content_width=WIDTH
    )
    sections = ["## keel\n\n```text\n" + _help(group, root) + "```\n"]
    for name, command in group.commands.items():
        ctx = command.context_class(command, info_name=name, parent=root)
        sections.append(f"## keel {name}\n\n```text\n" + _help(command, ctx) + "```\n")
    return "\n".join(sections)


def render_page(page: str) -> str:
    """`page` with the text between the markers replaced by the current reference."""
    head, found_begin, rest = page.partition(BEGIN)
    _, found_end, tail = rest.partition(END)
    if not (found_begin and found_end):
        raise ValueError(f"{DOC_PATH}: the BEGIN/END markers of the generated part are missing")
    return f"{head}{BEGIN}\n\n{cli_reference()}\n{END}{tail}"


def main(argv: list[str]) -> int:
    current = DOC_PATH.read_text(encoding="utf-8")
    updated = render_page(current)
    if "--check" in argv:
        if updated != current:
            print(f"{DOC_PATH} is out of date; run: python scripts/gen_cli_docs.py")
            return 1
        return 0
    if updated != current:
        DOC_PATH.write_text(updated, encoding="utf-8")
        print(f"updated {DOC_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
