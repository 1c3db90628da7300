"""Find the code blocks of README.md and docs/*.md, and run them against a real `keel serve`.

The convention the documentation follows (stated in docs/index.md, "Examples are tested"):

- a `bash` or `python` block is run, in page order, against a `keel serve` with its embedded
  defaults (open mode, the bundled local models); `http://127.0.0.1:8080` (and
  `localhost:8080`, `keel:8080`) in the block stands for that server, and `KEEL_URL` points to
  it, so `keel ...` commands and `Keel()` reach it too. The blocks of a page share one working
  directory, and its Python blocks one namespace (run in this process). A `curl` that gets an
  HTTP error status, a command that exits non-zero and a Python exception all fail the test;
- a `yaml` block is a configuration, validated by tests/test_docs.py;
- other languages (`text`, `json`) show output or wire formats and are not run;
- an HTML comment on the line right above a block changes that: `<!-- snippet: file NAME -->`
  writes the block to NAME in the page's working directory (a file a later block reads), and
  `<!-- snippet: skip REASON -->` leaves it out. A skipped block also says why in the visible
  text next to it, e.g. "(Needs a real OpenAI key; not run by the tests.)".
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.fakes.server import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = {"bash", "python"}
DOCUMENTED_SERVER = re.compile(r"(?:https?://)?(?:127\.0\.0\.1|localhost|keel):8080")
_FENCE = re.compile(r"^(?P<indent>[ ]*)```(?P<lang>[\w+-]*)[ ]*$")
_MARKER = re.compile(r"^\s*<!--\s*snippet:\s*(?P<kind>skip|file)\s+(?P<arg>.+?)\s*-->\s*$")
# The README opens with the install-and-test commands; tests/test_readme.py checks them, the
# CI runs the second one, and nothing may stand above them.
README_OPENING = "README's opening commands are checked by tests/test_readme.py and run by .ci/run"


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    marker: str | None  # "skip" or "file"
    marker_arg: str | None

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.lang in RUNNABLE and self.marker is None


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a page, each with the snippet marker right above it."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None or not opening.group("lang"):
            index += 1
            continue
        indent = opening.group("indent")
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        body = "\n".join(line.removeprefix(indent) for line in lines[index + 1 : end]) + "\n"
        marker = _MARKER.match(lines[index - 1]) if index > 0 else None
        relative = page.relative_to(ROOT).as_posix()
        if relative == "README.md" and index == 0:
            kind, arg = "skip", README_OPENING
        else:
            kind = marker.group("kind") if marker else None
            arg = marker.group("arg") if marker else None
        found.append(Block(relative, index + 1, opening.group("lang"), body, kind, arg))
        index = end + 1
    return found


def all_blocks() -> list[Block]:
    return [block for page in PAGES for block in blocks(page)]


def _clean_environment() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if not name.startswith("KEEL_")}


@contextmanager
def keel_serve(home: Path, *, timeout_s: float = 180) -> Iterator[str]:
    """A `keel serve` with its embedded defaults on a free loopback port; yields its URL."""
    port = free_port()
    env = _clean_environment() | {"KEEL_HOME": str(home)}
    process = subprocess.Popen(
        [sys.executable, "-m", "keel", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, timeout_s=timeout_s)
        yield url
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _curl_that_fails_on_http_errors(bin_dir: Path) -> None:
    """A `curl` first on PATH that fails, with the body shown, when the answer is an error."""
    real = next(
        candidate
        for directory in os.environ.get("PATH", "").split(os.pathsep)
        if (candidate := Path(directory) / "curl").is_file() and Path(directory) != bin_dir
    )
    shim = bin_dir / "curl"
    shim.write_text(f'#!/bin/sh\nexec "{real}" --fail-with-body "$@"\n', encoding="utf-8")
    shim.chmod(0o755)


@dataclass
class PageRun:
    """Runs a page's blocks, in order, in one working directory against one server."""

    url: str
    workdir: Path

    def __post_init__(self) -> None:
        bin_dir = self.workdir / ".bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        _curl_that_fails_on_http_errors(bin_dir)
        path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent)])
        self.env = _clean_environment() | {
            "KEEL_URL": self.url,
            "PATH": f"{path}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        self.namespace: dict[str, object] = {"__name__": "__doc_snippet__"}

    def _exec_python(self, block: Block, text: str) -> None:
        """Python blocks run in one namespace per page: a later block goes on from an earlier
        one (`gov = Keel().governance` once, then `gov.teams.update(...)`)."""
        saved_environment = dict(os.environ)
        saved_cwd = Path.cwd()
        os.environ.clear()
        os.environ.update(self.env)
        os.chdir(self.workdir)
        try:
            exec(compile(text, block.name, "exec"), self.namespace)
        except Exception as exc:
            raise AssertionError(
                f"{block.name} (python) raised {type(exc).__name__}: {exc}\n{text}"
            ) from exc
        finally:
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_environment)

    def rewrite(self, text: str) -> str:
        host_port = self.url.removeprefix("http://")

        def substitute(match: re.Match[str]) -> str:
            scheme = "http://" if match.group(0).startswith("http") else ""
            return scheme + host_port

        return DOCUMENTED_SERVER.sub(substitute, text)

    def run(self, block: Block, *, timeout_s: float = 180) -> str:
        """Run (or write out) one block; its output. Raises AssertionError when it fails."""
        if block.marker == "file":
            assert block.marker_arg is not None
            (self.workdir / block.marker_arg).write_text(block.text, encoding="utf-8")
            return ""
        text = self.rewrite(block.text)
        if block.lang == "python":
            self._exec_python(block, text)
            return ""
        if block.lang != "bash":
            raise ValueError(f"{block.name}: a {block.lang} block is not run")
        result = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", text],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, (
            f"{block.name} ({block.lang}) failed with exit status {result.returncode}:\n"
            f"{text}\n--- output ---\n{output}"
        )
        return output
