"""The audit log from Python: `Keel(...).audit`.

keel.audit.list(action="key.*", since="2026-03-01")   # entries, oldest first
keel.audit.export("audit.jsonl", actor="dana")           # -> number of entries written
keel.audit.verify()                                       # {"ok": True, "checked": 1234, ...}

Filters: `since` (inclusive) and `until` (exclusive), as datetimes or ISO-8601 text (naive
times are UTC); `actor` (exact); `action` (exact, or a prefix ending in "*"); `after_seq`.
Errors raise `KeelAPIError`. Importing this module never imports the server.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import httpx

__all__ = ["AuditAPI"]

RequestFn = Callable[..., dict[str, Any]]
Rows = list[dict[str, Any]]
PREFIX = "/v1/keel/audit"
_PAGE = 1000


def _params(**filters: Any) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, value in filters.items():
        if value is None:
            continue
        params[name] = value.isoformat() if isinstance(value, datetime) else value
    return params


class AuditAPI:
    """The audit routes. `request` is the client's `_request(method, path, **kwargs)`; `http`
    (the client's httpx.Client) streams exports."""

    def __init__(self, request: RequestFn, *, http: httpx.Client | None = None) -> None:
        self._request_fn = request
        self._http = http

    def page(
        self,
        *,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        actor: str | None = None,
        action: str | None = None,
        limit: int = 100,
        after_seq: int | None = None,
    ) -> dict[str, Any]:
        """One page: {"data": [...], "next_after_seq": N or None}."""
        params = _params(
            since=since, until=until, actor=actor, action=action, limit=limit, after_seq=after_seq
        )
        return self._request_fn("GET", PREFIX, params=params)

    def list(
        self,
        *,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        actor: str | None = None,
        action: str | None = None,
        limit: int = 100,
        after_seq: int | None = None,
    ) -> Rows:
        """Up to `limit` (1 to 1000) entries, oldest first."""
        page = self.page(
            since=since, until=until, actor=actor, action=action, limit=limit, after_seq=after_seq
        )
        data: Rows = page["data"]
        return data

    def export(
        self,
        destination: str | os.PathLike[str] | IO[str],
        *,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        actor: str | None = None,
        action: str | None = None,
        after_seq: int | None = None,
    ) -> int:
        """Write every matching entry as JSON lines to a path or an open text file; return
        how many. A path is written whole or not at all (through a temporary file)."""
        params = _params(since=since, until=until, actor=actor, action=action, after_seq=after_seq)
        if not isinstance(destination, str | os.PathLike):
            return self._write(destination, params)
        path = Path(destination)
        partial = path.with_name(path.name + ".partial")
        try:
            with partial.open("w", encoding="utf-8", newline="\n") as file:
                count = self._write(file, params)
            partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)
        return count

    def verify(self) -> dict[str, Any]:
        """{"ok", "checked", "first_broken_seq", "reason", "head_hash"}."""
        return self._request_fn("POST", f"{PREFIX}/verify")

    # -- plumbing ----------------------------------------------------------------------------

    def _write(self, file: IO[str], params: dict[str, Any]) -> int:
        if self._http is None:
            return self._write_pages(file, params)
        from keel.sdk.client import KeelConnectionError, _api_error

        count = 0
        try:
            with self._http.stream("GET", f"{PREFIX}/export", params=params) as response:
                if response.status_code >= 400:
                    raise _api_error(response.status_code, response.read())
                for line in response.iter_lines():
                    if line.strip():
                        file.write(line + "\n")
                        count += 1
        except httpx.TransportError as exc:
            raise KeelConnectionError(f"cannot reach Keel at {self._http.base_url}: {exc}") from exc
        return count

    def _write_pages(self, file: IO[str], params: dict[str, Any]) -> int:
        """Without the raw connection: page through the list route instead."""
        count = 0
        while True:
            page = self._request_fn("GET", PREFIX, params={**params, "limit": _PAGE})
            for entry in page["data"]:
                file.write(json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n")
                count += 1
            if page.get("next_after_seq") is None:
                return count
            params = {**params, "after_seq": page["next_after_seq"]}
