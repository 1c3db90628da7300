"""The model registry from Python: `Keel(...).registry`.

keel.registry.add("card.yaml")                         # version 1 of the card's model
keel.registry.alias("support-bot", "production", 1, reason="first release")
keel.registry.promote("support-bot", 2, "production")  # then another maintainer approves
keel.registry.as_actor("dana", roles=["maintainer"]).approve(promotion_id)

Each method is one HTTP call; errors raise `KeelAPIError` (its `param` names the field).
Importing this module never imports the server or the registry's storage.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

__all__ = ["RegistryAPI", "parse_gate"]

RequestFn = Callable[..., dict[str, Any]]
Rows = list[dict[str, Any]]
PREFIX = "/v1/keel/registry"
_OPS = (">=", "<=", ">", "<")


def _seg(value: str | int) -> str:
    """One URL path segment (a model name, alias, stage or id), escaped."""
    return quote(str(value), safe="@")


def parse_gate(text: str) -> dict[str, Any]:
    """`accuracy>=0.8` or `accuracy@squad-v2>=0.8` (a gate on one dataset) as a gate object."""
    for op in _OPS:
        left, found, right = text.partition(op)
        if found:
            metric, _, dataset = left.strip().partition("@")
            try:
                threshold = float(right.strip())
            except ValueError:
                raise ValueError(f"gate {text!r}: {right.strip()!r} is not a number") from None
            if not math.isfinite(threshold):
                raise ValueError(f"gate {text!r}: the threshold must be a finite number")
            if not metric.strip():
                raise ValueError(f"gate {text!r}: the metric name is missing")
            return {
                "metric": metric.strip(),
                "op": op,
                "threshold": threshold,
                "dataset": dataset.strip() or None,
            }
    raise ValueError(f"gate {text!r}: write it as METRIC>=NUMBER (ops: {', '.join(_OPS)})")


class RegistryAPI:
    """The registry routes. `request` is the client's `_request(method, path, **kwargs)`;
    `http` (the client's httpx.Client) is used only to fetch exports as text."""

    def __init__(
        self,
        request: RequestFn,
        *,
        http: httpx.Client | None = None,
        actor: str | None = None,
        roles: Iterable[str] | None = None,
    ) -> None:
        self._request_fn = request
        self._http = http
        self.actor = actor or os.environ.get("KEEL_ACTOR") or None
        if roles is None and os.environ.get("KEEL_ROLES"):
            roles = os.environ["KEEL_ROLES"].split(",")
        self.roles = None if roles is None else [role.strip() for role in roles if role.strip()]

    def as_actor(self, actor: str | None, roles: Iterable[str] | None = None) -> RegistryAPI:
        """The same client acting as someone else (the x-keel-actor/x-keel-roles headers,
        honoured in open mode only; see docs/registry.md)."""
        return RegistryAPI(self._request_fn, http=self._http, actor=actor, roles=roles)

    # -- models and versions ---------------------------------------------------------------

    def add(
        self, card: Mapping[str, Any] | str | Path, *, name: str | None = None
    ) -> dict[str, Any]:
        """Register a card: a dict, or the path of a YAML or JSON file. With `name`, the card
        is a new version of that existing model instead of a new model.

        The file goes to the server as it is (a `.json` file as JSON, any other as YAML, of
        which JSON is a subset), so the server reports any problem with line and column.
        Raises OSError where the file cannot be read, ValueError where it is not UTF-8."""
        path = f"{PREFIX}/models" if name is None else f"{PREFIX}/models/{_seg(name)}/versions"
        if isinstance(card, Mapping):
            return self._call("POST", path, json=dict(card))
        file = Path(card)
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{file}: the card is not UTF-8 text ({exc.reason})") from None
        is_json = file.suffix.lower() == ".json"
        content_type = "application/json" if is_json else "application/yaml"
        return self._call(
            "POST", path, content=text.encode("utf-8"), headers={"content-type": content_type}
        )

    def add_version(self, name: str, card: Mapping[str, Any] | str | Path) -> dict[str, Any]:
        return self.add(card, name=name)

    def list(self, *, include_archived: bool = False) -> Rows:
        params = {"include_archived": "true"} if include_archived else {}
        return self._data("GET", f"{PREFIX}/models", params=params)

    def show(self, reference: str) -> dict[str, Any]:
        """`name` (the model's summary), or `name@3` / `name@production` (one version)."""
        name, _, ref = reference.partition("@")
        if ref:
            return self.version(name, ref)
        return self._call("GET", f"{PREFIX}/models/{_seg(name)}")

    def version(self, name: str, ref: int | str) -> dict[str, Any]:
        """One version, by number or alias, with its card and evaluations."""
        return self._call("GET", f"{PREFIX}/models/{_seg(name)}/versions/{_seg(ref)}")

    def versions(self, name: str) -> Rows:
        """Every version of `name`, oldest first."""
        summary = self.show(name)
        found: Rows = summary.get("versions") or []
        return found

    def diff(self, name: str, a: int | str, b: int | str) -> dict[str, Any]:
        params = {"from": str(a), "to": str(b)}
        return self._call("GET", f"{PREFIX}/models/{_seg(name)}/diff", params=params)

    def export(self, name: str, *, format: str = "yaml", version: int | None = None) -> str:
        """The card as text: `yaml` or `json` (the author's form) or `huggingface` (JSON)."""
        params: dict[str, Any] = {"format": format}
        if version is not None:
            params["version"] = version
        path = f"{PREFIX}/models/{_seg(name)}/export"
        if self._http is None:  # no raw access: take the JSON forms through `request`
            if format == "yaml":
                raise ValueError("exporting YAML needs the client's http connection")
            return json.dumps(self._call("GET", path, params=params), indent=2)
        return self._text(path, params)

    def archive(self, name: str, *, version: int | None = None) -> dict[str, Any]:
        body = {"version": version} if version is not None else {}
        return self._call("POST", f"{PREFIX}/models/{_seg(name)}/archive", json=body)

    # -- aliases ---------------------------------------------------------------------------

    def alias(
        self,
        name: str,
        alias: str,
        version: int,
        *,
        reason: str,
        expected_version: int | None = None,
        approval_id: str | None = None,
    ) -> dict[str, Any]:
        """Point `alias` at `version`; with `expected_version`, only if it still points there.
        `staging`/`production` move only with the `approval_id` of that version's promotion."""
        body: dict[str, Any] = {"version": version, "reason": reason}
        if expected_version is not None:
            body["expected_version"] = expected_version
        if approval_id is not None:
            body["approval_id"] = approval_id
        return self._call("PUT", f"{PREFIX}/models/{_seg(name)}/aliases/{_seg(alias)}", json=body)

    def history(self, name: str, alias: str | None = None) -> Rows:
        middle = f"/{_seg(alias)}" if alias else ""
        return self._data("GET", f"{PREFIX}/models/{_seg(name)}/aliases{middle}/history")

    def alias_at(self, name: str, alias: str, at: str) -> dict[str, Any]:
        """Where `alias` pointed at `at` (ISO 8601 text, or a datetime's isoformat())."""
        return self._call(
            "GET", f"{PREFIX}/models/{_seg(name)}/aliases/{_seg(alias)}/at", params={"time": at}
        )

    # -- promotions, gates, evaluations ------------------------------------------------------

    def promote(
        self,
        name: str,
        version: int,
        stage: str,
        *,
        comment: str | None = None,
        expires_in_s: int | None = None,
    ) -> dict[str, Any]:
        """Ask for `version` to be promoted to `stage`; someone else approves it."""
        body = _given(version=version, stage=stage, comment=comment, expires_in_s=expires_in_s)
        return self._call("POST", f"{PREFIX}/models/{_seg(name)}/promotions", json=body)

    def approve(
        self, promotion_id: str, *, comment: str | None = None, override_gates: bool = False
    ) -> dict[str, Any]:
        body = _given(comment=comment, override_gates=override_gates or None)
        return self._call("POST", f"{PREFIX}/promotions/{_seg(promotion_id)}/approve", json=body)

    def reject(self, promotion_id: str, *, comment: str | None = None) -> dict[str, Any]:
        body = _given(comment=comment)
        return self._call("POST", f"{PREFIX}/promotions/{_seg(promotion_id)}/reject", json=body)

    def promotions(self, *, model: str | None = None, status: str | None = None) -> Rows:
        return self._data("GET", f"{PREFIX}/promotions", params=_given(model=model, status=status))

    def gates(
        self, name: str, stage: str, gates: Iterable[str | Mapping[str, Any]]
    ) -> dict[str, Any]:
        """Replace the gates for `stage`: "accuracy>=0.8" strings or gate dicts; [] clears."""
        body = [parse_gate(gate) if isinstance(gate, str) else dict(gate) for gate in gates]
        return self._call("PUT", f"{PREFIX}/models/{_seg(name)}/gates/{_seg(stage)}", json=body)

    def evaluate(
        self,
        name: str,
        version: int,
        metric: str,
        value: float,
        *,
        dataset: str | None = None,
        run_id: str | None = None,
    ) -> dict[str, Any]:
        if not math.isfinite(value):
            raise ValueError(f"evaluation value must be a finite number, got {value!r}")
        body = _given(metric=metric, value=value, dataset=dataset, run_id=run_id)
        path = f"{PREFIX}/models/{_seg(name)}/versions/{int(version)}/evaluations"
        return self._call("POST", path, json=body)

    # -- lineage -----------------------------------------------------------------------------

    def link(
        self,
        upstream: tuple[str, str] | Mapping[str, str],
        downstream: tuple[str, str] | Mapping[str, str],
        *,
        relation: str,
    ) -> dict[str, Any]:
        """Record an edge: `upstream` and `downstream` are (kind, id) pairs or {kind, id}."""
        body: dict[str, Any] = {
            "upstream": _entity(upstream),
            "downstream": _entity(downstream),
            "relation": relation,
        }
        return self._call("POST", "/v1/keel/lineage/links", json=body)

    def lineage(self, kind: str, entity_id: str, *, direction: str = "both") -> dict[str, Any]:
        path = f"/v1/keel/lineage/{_seg(kind)}/{quote(entity_id, safe='@/')}"
        return self._call("GET", path, params={"direction": direction})

    # -- plumbing ----------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.actor:
            headers["x-keel-actor"] = self.actor
        if self.roles is not None:
            headers["x-keel-roles"] = ",".join(self.roles)
        return headers

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        headers = {**self._headers(), **kwargs.pop("headers", {})}
        return self._request_fn(method, path, headers=headers, **kwargs)

    def _data(self, method: str, path: str, **kwargs: Any) -> Rows:
        data: Rows = self._call(method, path, **kwargs)["data"]
        return data

    def _text(self, path: str, params: dict[str, Any]) -> str:
        from keel.sdk.client import KeelConnectionError, _api_error

        assert self._http is not None
        try:
            response = self._http.get(path, params=params, headers=self._headers())
        except httpx.TransportError as exc:
            raise KeelConnectionError(f"cannot reach Keel at {self._http.base_url}: {exc}") from exc
        if response.status_code >= 400:
            raise _api_error(response.status_code, response.content)
        return response.text


def _given(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _entity(value: tuple[str, str] | Mapping[str, str]) -> dict[str, str]:
    if isinstance(value, Mapping):
        return {"kind": value["kind"], "id": value["id"]}
    kind, entity_id = value
    return {"kind": kind, "id": entity_id}
