"""A suite's prompts and dataset, inline or from the prompt and dataset stores.

Stored prompts and datasets are read over the server's REST routes, in both modes (the
embedded gateway is the same app), so a suite behaves the same on a laptop and against a
shared server.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from keel.errors import InvalidRequestError
from keel.evals.client import CallFailed, EvalClient
from keel.evals.suite import (
    DatasetSpec,
    PromptSpec,
    ResolvedPrompt,
    inline_prompt,
    read_dataset_file,
)

__all__ = ["resolve_dataset", "resolve_prompt", "rows_digest"]


def rows_digest(rows: list[dict[str, Any]]) -> str:
    text = json.dumps(rows, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


async def resolve_prompt(spec: PromptSpec, client: EvalClient) -> ResolvedPrompt:
    if spec.ref is None:
        return inline_prompt(spec)
    name, _, version = spec.ref.partition("@")
    quoted = quote(name, safe="")
    try:
        if not version:
            # A plain name means what it means everywhere: its production alias, else the latest.
            overview = await client.get(f"/v1/keel/prompts/{quoted}")
            version = str(overview.get("aliases", {}).get("production", "latest"))
        body = await client.get(f"/v1/keel/prompts/{quoted}/versions/{quote(version, safe='')}")
    except CallFailed as exc:
        raise InvalidRequestError(f"prompt {spec.ref!r}: {exc}", param="prompts") from None
    stored = _stored_version(body)
    template = stored.get("template")
    label = spec.id or spec.ref
    if isinstance(template, str):
        resolved = inline_prompt(PromptSpec(id=label, template=template))
    elif isinstance(template, list):
        resolved = inline_prompt(PromptSpec(id=label, messages=template))
    else:
        raise InvalidRequestError(f"prompt {spec.ref!r}: the server sent no template")
    number = stored.get("version")
    return ResolvedPrompt(
        label=label,
        version=f"{stored.get('name', name)}@{number}",
        digest=str(stored.get("digest") or resolved.digest),
        variables=resolved.variables,
        render=resolved.render,
    )


def _stored_version(body: dict[str, Any]) -> dict[str, Any]:
    """A version object, whether the route answered with the version or with its prompt."""
    if "template" in body:
        return body
    latest = body.get("latest") or (body.get("versions") or [None])[-1]
    if isinstance(latest, dict):
        return latest
    return body


async def resolve_dataset(
    spec: DatasetSpec, client: EvalClient, *, base_dir: str | None
) -> tuple[list[dict[str, Any]], str]:
    """The rows (first `limit`) and the dataset's lineage id: `name@version` for a stored
    dataset, `sha256:<digest>` of the rows for a file or inline rows."""
    if spec.rows is not None:
        rows = spec.rows
        dataset_id = f"sha256:{rows_digest(rows)[:16]}"
    elif spec.path is not None:
        path = Path(spec.path).expanduser()
        if not path.is_absolute() and base_dir:
            path = Path(base_dir) / path
        rows = read_dataset_file(path)
        dataset_id = f"sha256:{rows_digest(rows)[:16]}"
    else:
        assert spec.ref is not None
        rows, dataset_id = await _stored_rows(spec.ref, spec.split, client)
    if spec.limit is not None:
        rows = rows[: spec.limit]
    return rows, dataset_id


async def _stored_rows(
    ref: str, split: str | None, client: EvalClient
) -> tuple[list[dict[str, Any]], str]:
    """Every row of a stored dataset version (one split's with `split`), page by page."""
    name, _, version = ref.partition("@")
    path = (
        f"/v1/keel/datasets/{quote(name, safe='')}/versions/{quote(version or 'latest', safe='')}"
    )
    rows: list[dict[str, Any]] = []
    stored_ref = ref
    try:
        while True:
            params: dict[str, Any] = {"offset": len(rows), "limit": 1000}
            if split:
                params["split"] = split
            page = await client.get(f"{path}/rows", **params)
            found = page.get("data")
            if not isinstance(found, list):
                raise InvalidRequestError(f"dataset {ref!r}: the server sent no rows")
            rows.extend(dict(row) for row in found)
            stored_ref = str(page.get("ref") or ref)
            if not page.get("has_more") or not found:
                break
    except CallFailed as exc:
        raise InvalidRequestError(f"dataset {ref!r}: {exc}", param="dataset.ref") from None
    return rows, stored_ref
