"""Every `bash` and `python` block of README.md and docs/*.md runs as written against a real
`keel serve`, or says why not; the convention is in tests/docs_runner.py and docs/index.md."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docs_runner import PAGES, ROOT, Block, PageRun, all_blocks, blocks, keel_serve
from tests.test_docs import _yaml_examples

VISIBLE_NOTE = "not run by the tests"
MARKER_LINE = re.compile(r"^\s*<!--\s*snippet:")


def _pages_with_runnable_blocks() -> list[Path]:
    return [page for page in PAGES if any(block.runs for block in blocks(page))]


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # One server for every page keeps the suite short; the pages' examples therefore use
    # names of their own where they create something.
    with keel_serve(tmp_path_factory.mktemp("keel-docs")) as url:
        yield url


@pytest.mark.parametrize(
    "page", _pages_with_runnable_blocks(), ids=lambda page: page.relative_to(ROOT).as_posix()
)
def test_page_snippets_run(page: Path, server_url: str, tmp_path: Path) -> None:
    runner = PageRun(server_url, tmp_path)
    for block in blocks(page):
        if block.runs or block.marker == "file":
            runner.run(block)


def _skipped() -> list[Block]:
    return [block for block in all_blocks() if block.marker == "skip"]


def test_every_skipped_block_says_why_where_readers_see_it() -> None:
    unexplained = []
    for block in _skipped():
        if block.page == "README.md" and block.line == 1:
            continue  # the opening commands: tests/test_readme.py
        lines = (ROOT / block.page).read_text(encoding="utf-8").splitlines()
        # The note stands in the paragraph just above the marker, or just below the block.
        closing = block.line + block.text.count("\n")
        around = lines[max(0, block.line - 6) : block.line - 2] + lines[closing : closing + 3]
        if VISIBLE_NOTE not in " ".join(around) or not block.marker_arg:
            unexplained.append(block.name)
    assert not unexplained, (
        f"skipped blocks need a reason in the marker and a visible '{VISIBLE_NOTE}' note: "
        + ", ".join(unexplained)
    )


def test_markers_stand_above_blocks_that_use_them() -> None:
    misplaced = []
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        marked = {block.line - 1 for block in blocks(page) if block.marker}
        for number, line in enumerate(lines, start=1):
            if MARKER_LINE.match(line) and number not in marked:
                misplaced.append(f"{page.relative_to(ROOT).as_posix()}:{number}")
    assert not misplaced, "snippet markers not right above a fenced block: " + ", ".join(misplaced)


def test_every_yaml_block_is_validated_as_a_configuration() -> None:
    validated = {text for _, _, text in _yaml_examples()}
    unchecked = [
        block.name
        for block in all_blocks()
        if block.lang == "yaml" and block.marker is None and block.text not in validated
    ]
    assert not unchecked, "yaml blocks no test validates: " + ", ".join(unchecked)


def test_runnable_blocks_are_found() -> None:
    # The parser itself: a page we know has runnable blocks of both kinds.
    found = {block.lang for block in blocks(ROOT / "docs" / "getting-started.md") if block.runs}
    assert found == {"bash", "python"}
