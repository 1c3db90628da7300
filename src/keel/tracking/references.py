"""Names and references shared by datasets and prompts: `name`, `name@3`, `name@alias`."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from keel.errors import InvalidRequestError

__all__ = ["canonical_digest", "checked_alias", "checked_name", "split_ref", "utc"]

MAX_NAME = 255
MAX_ALIAS = 64
MAX_VERSION = 2**31 - 1


def checked_name(name: str, kind: str) -> str:
    # '@' separates a name from its version or alias; '/' would split the name's URL path
    # segment; NUL can't be stored by PostgreSQL.
    if (
        not isinstance(name, str)
        or not name
        or name != name.strip()
        or "@" in name
        or "/" in name
        or "\x00" in name
        or len(name) > MAX_NAME
    ):
        raise InvalidRequestError(
            f"invalid {kind} name {name!r}: 1 to {MAX_NAME} characters, no '@' or '/', no "
            "surrounding spaces",
            param="name",
        )
    return name


def checked_alias(alias: str) -> str:
    # Numbers are versions and `latest` is always the newest version, so neither is an alias.
    if (
        not alias
        or alias != alias.strip()
        or "@" in alias
        or "/" in alias
        or "\x00" in alias
        or len(alias) > MAX_ALIAS
        or alias.isdigit()
        or alias == "latest"
    ):
        raise InvalidRequestError(
            f"invalid alias {alias!r}: 1 to {MAX_ALIAS} characters, not a number, not 'latest'",
            param="alias",
        )
    return alias


def split_ref(ref: str, kind: str) -> tuple[str, int | str | None]:
    """`name` → (name, None); `name@3` → (name, 3); `name@alias` → (name, "alias")."""
    name, at, tail = ref.partition("@")
    checked_name(name, kind)
    if not at:
        return name, None
    if not tail:
        raise InvalidRequestError(f"{ref!r}: nothing after '@'", param="ref")
    if tail.isascii() and tail.isdigit():
        number = int(tail)
        if not 1 <= number <= MAX_VERSION:
            raise InvalidRequestError(f"{ref!r}: no such version number", param="ref")
        return name, number
    return name, tail


def canonical_digest(value: Any) -> str:
    """sha256 of the canonical JSON form: sorted keys, no spaces, UTF-8."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; every stored one is UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
