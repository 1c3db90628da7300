"""README.md starts with exactly the two commands, and .ci/run runs the second one verbatim."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    assert text.startswith("```bash\n"), "README.md must open with the two commands"
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_opens_with_install_and_test_commands() -> None:
    install, test = readme_commands()
    assert install.endswith("keel serve")
    assert "pytest" in test and "mypy" in test and "ruff check" in test


def test_ci_runs_the_readme_test_command() -> None:
    _, test = readme_commands()
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci_lines
