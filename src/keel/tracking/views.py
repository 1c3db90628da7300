"""What reading runs returns: plain dicts and lists (JSON as the API answers it) that Jupyter
renders as HTML tables through `_repr_html_`."""

from __future__ import annotations

from html import escape
from typing import Any

__all__ = ["Comparison", "RunList", "RunView", "environment_label", "format_value"]


def format_value(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict | list):
        import json

        return json.dumps(value, sort_keys=True)
    return str(value)


def environment_label(run: dict[str, Any]) -> str:
    """Where a run ran: `local` (embedded store), `sandbox`, or `production` (labelled, as a
    run made with a production key can touch production traffic and quotas)."""
    environment = run.get("environment")
    return str(environment) if environment else "—"


def _table(header: list[str], rows: list[list[str]], *, highlight: set[int] | None = None) -> str:
    head = "".join(f"<th>{escape(cell)}</th>" for cell in header)
    body = []
    for index, row in enumerate(rows):
        style = ' style="background:#fff3cd"' if highlight and index in highlight else ""
        cells = "".join(f"<td>{escape(cell)}</td>" for cell in row)
        body.append(f"<tr{style}>{cells}</tr>")
    return (
        '<table class="keel-table"><thead><tr>'
        f"{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


class RunView(dict[str, Any]):
    """One run: id, experiment, status, params, tags, metrics (per key: last, step, min, max,
    count), artifacts, inputs, provenance."""

    def _repr_html_(self) -> str:
        title = (
            f"<p><b>Run {escape(str(self.get('id')))}</b> — "
            f"{escape(str(self.get('experiment')))} · {escape(str(self.get('status')))} · "
            f"{escape(environment_label(self))}</p>"
        )
        params = [[key, format_value(value)] for key, value in self.get("params", {}).items()]
        metrics = [
            [
                key,
                format_value(summary.get("last")),
                str(summary.get("step")),
                str(summary.get("count")),
            ]
            for key, summary in self.get("metrics", {}).items()
        ]
        parts = [title]
        if params:
            parts.append(_table(["param", "value"], params))
        if metrics:
            parts.append(_table(["metric", "last", "step", "points"], metrics))
        if self.get("tags"):
            parts.append(_table(["tag", "value"], [[k, v] for k, v in self["tags"].items()]))
        if self.get("artifacts"):
            parts.append(
                _table(
                    ["artifact", "bytes"],
                    [[a["name"], str(a["size"])] for a in self["artifacts"]],
                )
            )
        return "".join(parts)


class RunList(list[RunView]):
    """Runs, newest first; one row each with their params and last metric values."""

    def __init__(self, runs: list[dict[str, Any]]) -> None:
        super().__init__(RunView(run) for run in runs)

    def _repr_html_(self) -> str:
        params = sorted({key for run in self for key in run.get("params", {})})
        metrics = sorted({key for run in self for key in run.get("metrics", {})})
        header = ["run", "experiment", "status", "environment", "started", *params, *metrics]
        rows = [
            [
                str(run.get("name") or run.get("id")),
                str(run.get("experiment")),
                str(run.get("status")),
                environment_label(run),
                str(run.get("started_at") or "")[:19],
                *(format_value(run.get("params", {}).get(key)) for key in params),
                *(
                    format_value((run.get("metrics", {}).get(key) or {}).get("last"))
                    for key in metrics
                ),
            ]
            for run in self
        ]
        return _table(header, rows)


class Comparison(dict[str, Any]):
    """Runs side by side: `params` and `metrics` map each key to one value per run; rows
    whose values differ are listed in `differing_params` / `differing_metrics`."""

    def _repr_html_(self) -> str:
        runs = self.get("runs", [])
        header = ["", *(str(run.get("name") or run.get("id")) for run in runs)]
        rows: list[list[str]] = []
        differing: set[int] = set()
        for section, changed in (("params", "differing_params"), ("metrics", "differing_metrics")):
            for key, values in self.get(section, {}).items():
                if key in self.get(changed, []):
                    differing.add(len(rows))
                label = key if section == "params" else f"{key} (metric)"
                rows.append([label, *(format_value(value) for value in values)])
        return _table(header, rows, highlight=differing)
