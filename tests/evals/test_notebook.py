"""examples/compare-models.ipynb runs end to end on a real kernel against the bundled model."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "compare-models.ipynb"


def test_compare_models_notebook_runs(
    tmp_path: Path, keel_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nbformat
    from nbclient import NotebookClient

    # Only the chat model is needed: leave the bundled embedding model unloaded.
    config = tmp_path / "keel.yaml"
    config.write_text("local_models:\n  embeddings: false\n", encoding="utf-8")
    monkeypatch.setenv("KEEL_CONFIG", str(config))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()

    leaderboard = notebook.cells[1].outputs[-1]["data"]["text/html"]
    assert "smollm2-135m-instruct" in leaderboard and "terse" in leaderboard
    printed = "".join(output.get("text", "") for output in notebook.cells[3].outputs)
    assert "cases: 8 run: " in printed
    for line in printed.splitlines()[:2]:
        score = float(line.split("icontains=")[1].split()[0])
        assert 0.0 <= score <= 1.0
    # The result was saved as a finished run in this KEEL_HOME's store.
    from keel.config_loading import load_settings
    from keel.tracking import get_run
    from keel.tracking.embedded import EmbeddedTracking

    run_id = printed.split("run: ")[1].strip()
    tracking = EmbeddedTracking.from_settings(load_settings())
    try:
        run = get_run(run_id, client=tracking)
    finally:
        tracking.close()
    assert run["status"] == "finished" and run["tags"]["keel.kind"] == "eval"
