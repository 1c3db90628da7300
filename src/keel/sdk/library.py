"""Datasets, prompt templates and scorers from Python: `Keel(...).datasets`, `.prompts`,
`.scorers`.

keel.datasets.add("qa", "qa.jsonl", splits={"train": 0.8, "test": 0.2})   # version 1
keel.datasets.rows("qa@1", split="test")
keel.prompts.add("qa", [{"role": "user", "content": "Q: {{ question }}"}])
keel.prompts.alias("qa", "production", 1)
keel.prompts.render("qa@production", {"question": "Capital of France?"})
keel.scorers.score({"type": "rouge_l"}, [{"output": "...", "expected": "..."}])

Files are read on the caller's machine and sent as JSON rows, so a remote server needs no
access to them. Each method is one HTTP call (row reads page through several); errors raise
`KeelAPIError`. Importing this module never imports the server.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from keel.evals.scorers import Scorer

__all__ = ["DatasetsAPI", "PromptsAPI", "ScorersAPI"]

RequestFn = Callable[..., dict[str, Any]]
_PAGE = 5000


def _seg(value: str | int) -> str:
    return quote(str(value), safe="")


def _split_ref(ref: str) -> tuple[str, str | None]:
    name, at, tail = ref.partition("@")
    if not name or (at and not tail):
        raise ValueError(f"{ref!r} is not NAME, NAME@VERSION or NAME@ALIAS")
    return name, tail or None


def _file_rows(path: str | Path, format: str | None) -> list[dict[str, Any]]:
    from keel.errors import KeelError
    from keel.tracking.dataset_files import read_rows

    try:
        return read_rows(Path(path), format)
    except KeelError as exc:
        raise ValueError(exc.message) from None


class DatasetsAPI:
    def __init__(self, request: RequestFn) -> None:
        self._request = request

    def add(
        self,
        name: str,
        path: str | Path | None = None,
        *,
        rows: builtins.list[dict[str, Any]]
        | Mapping[str, builtins.list[dict[str, Any]]]
        | None = None,
        format: str | None = None,
        split: str | None = None,
        splits: Mapping[str, float] | None = None,
        description: str | None = None,
    ) -> dict[str, Any]:
        """A new version from a JSONL, CSV or Parquet file, or from `rows` (a list, or split
        name → list). `split` names the one split the rows go into; `splits` divides them by
        fractions. Content an existing version holds returns that version (`created` false)."""
        if (path is None) == (rows is None):
            raise ValueError("give a file path or rows, not both")
        body: dict[str, Any] = {"name": name, "description": description}
        if path is not None:
            file = Path(path)
            body["rows"] = _file_rows(file, format)
            body["source"] = {
                "kind": "file",
                "file": file.name,
                "format": format or file.suffix.lstrip("."),
            }
        elif isinstance(rows, Mapping):
            body["rows_by_split"] = {key: list(value) for key, value in rows.items()}
        else:
            body["rows"] = list(rows or [])
        if split is not None:
            body["split"] = split
        if splits is not None:
            body["splits"] = dict(splits)
        return self._request("POST", "/v1/keel/datasets", json=_compact(body))

    def add_from_production(
        self,
        name: str,
        *,
        model: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        label: str | None = None,
        thumbs: str | None = None,
        feedback_name: str | None = None,
        limit: int = 1000,
        split: str | None = None,
        splits: Mapping[str, float] | None = None,
        description: str | None = None,
    ) -> dict[str, Any]:
        """A version from captured production calls (payload capture must be on), PII masked
        by the server's policy; filter by model, time window and feedback label or thumbs."""
        production = {
            "model": model,
            "since": since.isoformat() if isinstance(since, datetime) else since,
            "until": until.isoformat() if isinstance(until, datetime) else until,
            "label": label,
            "thumbs": thumbs,
            "feedback_name": feedback_name,
            "limit": limit,
        }
        body = {
            "name": name,
            "production": _compact(production),
            "split": split,
            "splits": dict(splits) if splits is not None else None,
            "description": description,
        }
        return self._request("POST", "/v1/keel/datasets", json=_compact(body))

    def list(self) -> builtins.list[dict[str, Any]]:
        data: builtins.list[dict[str, Any]] = self._request("GET", "/v1/keel/datasets")["data"]
        return data

    def get(self, name: str) -> dict[str, Any]:
        """A dataset with all its versions."""
        return self._request("GET", f"/v1/keel/datasets/{_seg(name)}")

    def version(self, ref: str) -> dict[str, Any]:
        """`name` (the latest version) or `name@3`."""
        name, tail = _split_ref(ref)
        return self._request(
            "GET", f"/v1/keel/datasets/{_seg(name)}/versions/{_seg(tail or 'latest')}"
        )

    def rows(
        self, ref: str, split: str | None = None, *, limit: int | None = None
    ) -> builtins.list[dict[str, Any]]:
        """The rows of a version (of one split, or of all in order), read page by page; the
        first `limit` of them when given."""
        name, tail = _split_ref(ref)
        if tail is None or tail == "latest":  # pin the version, so pages can't straddle a newer one
            tail = str(self.version(ref)["version"])
        path = f"/v1/keel/datasets/{_seg(name)}/versions/{_seg(tail)}/rows"
        found: builtins.list[dict[str, Any]] = []
        while limit is None or len(found) < limit:
            want = _PAGE if limit is None else min(_PAGE, limit - len(found))
            params: dict[str, Any] = {"offset": len(found), "limit": want}
            if split is not None:
                params["split"] = split
            page = self._request("GET", path, params=params)
            found.extend(page["data"])
            if not page.get("has_more") or not page["data"]:
                break
        return found

    def export(
        self, ref: str, path: str | Path, *, format: str | None = None, split: str | None = None
    ) -> Path:
        """Write a version's rows to a JSONL, CSV or Parquet file (format from the suffix)."""
        from keel.errors import KeelError
        from keel.tracking.dataset_files import write_rows

        target = Path(path)
        rows = self.rows(ref, split)
        try:
            write_rows(target, rows, format)
        except KeelError as exc:
            raise ValueError(exc.message) from None
        return target


class PromptsAPI:
    def __init__(self, request: RequestFn) -> None:
        self._request = request

    def add(
        self,
        name: str,
        template: str | builtins.list[dict[str, str]],
        *,
        description: str | None = None,
        variables: Iterable[str] | None = None,
    ) -> dict[str, Any]:
        """A new version: a text template or a list of chat messages (Jinja2). The same
        content as an existing version returns that version (`created` false)."""
        body = {
            "name": name,
            "template": template,
            "description": description,
            "variables": list(variables) if variables is not None else None,
        }
        return self._request("POST", "/v1/keel/prompts", json=_compact(body))

    def list(self) -> builtins.list[dict[str, Any]]:
        data: builtins.list[dict[str, Any]] = self._request("GET", "/v1/keel/prompts")["data"]
        return data

    def get(self, name: str) -> dict[str, Any]:
        """A prompt with its versions and aliases."""
        return self._request("GET", f"/v1/keel/prompts/{_seg(name)}")

    def version(self, ref: str) -> dict[str, Any]:
        """`name@3`, `name@production`, `name@latest`, or `name` (its production alias if
        set, else the latest version)."""
        name, tail = _split_ref(ref)
        if tail is None:
            prompt = self.get(name)
            tail = str(prompt["aliases"].get("production", prompt["latest_version"]))
        return self._request("GET", f"/v1/keel/prompts/{_seg(name)}/versions/{_seg(tail)}")

    def render(
        self, ref: str, variables: Mapping[str, Any] | None = None
    ) -> builtins.list[dict[str, str]]:
        """The chat messages `ref` renders to; a missing variable is a 400 naming it."""
        name, tail = _split_ref(ref)
        body = _compact({"ref": tail, "variables": dict(variables or {})})
        result = self._request("POST", f"/v1/keel/prompts/{_seg(name)}/render", json=body)
        messages: builtins.list[dict[str, str]] = result["messages"]
        return messages

    def alias(self, name: str, alias: str, version: int) -> dict[str, Any]:
        return self._request(
            "PUT", f"/v1/keel/prompts/{_seg(name)}/aliases/{_seg(alias)}", json={"version": version}
        )

    def alias_history(self, name: str, alias: str | None = None) -> builtins.list[dict[str, Any]]:
        params = {"alias": alias} if alias is not None else {}
        data: builtins.list[dict[str, Any]] = self._request(
            "GET", f"/v1/keel/prompts/{_seg(name)}/aliases/history", params=params
        )["data"]
        return data


class ScorersAPI:
    def __init__(self, request: RequestFn, client: Any) -> None:
        self._request = request
        self._client = client

    def list(self) -> builtins.list[dict[str, Any]]:
        """The scorer types the server knows: built in, and installed entry points."""
        data: builtins.list[dict[str, Any]] = self._request("GET", "/v1/keel/scorers")["data"]
        return data

    def score(
        self, scorer: str | Mapping[str, Any], cases: Iterable[Mapping[str, Any]]
    ) -> dict[str, Any]:
        """Score cases ({output, expected, inputs, latency_s, cost_usd}) on the server:
        `scores` per case and the `aggregate` (its `score` is the headline figure)."""
        spec = scorer if isinstance(scorer, str) else dict(scorer)
        body = {"scorer": spec, "cases": [dict(case) for case in cases]}
        return self._request("POST", "/v1/keel/scorers/score", json=body)

    def resolve(self, scorer: str | dict[str, Any]) -> Scorer:
        """The scorer, in this process (import-path scorers work here), with its judge and
        embedding models reached through this client's Keel server."""
        from keel.evals.scorers import resolve_scorer

        client = self._client

        async def chat(model: str, messages: builtins.list[dict[str, Any]]) -> str:
            answer = await asyncio.to_thread(
                client.chat, model, messages, temperature=0, max_tokens=128
            )
            content = answer["choices"][0]["message"].get("content")
            return content if isinstance(content, str) else ""

        async def embed(
            model: str, texts: builtins.list[str]
        ) -> builtins.list[builtins.list[float]]:
            answer = await asyncio.to_thread(client.embed, model, texts)
            rows = sorted(answer["data"], key=lambda item: item["index"])
            return [list(map(float, row["embedding"])) for row in rows]

        return resolve_scorer(scorer, chat=chat, embed=embed)


def _compact(body: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if value is not None}
