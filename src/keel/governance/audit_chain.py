"""The audit log's hash chain, without a database: how a value becomes storable JSON, how
secrets are kept out of it, the canonical form an entry is hashed in, and the walk that checks a
run of entries still forms one unbroken chain.

Every entry's `hash` is the SHA-256 (hex) of the canonical JSON of all its columns except `seq`
and `hash`, `prev_hash` included; the first entry's `prev_hash` is `GENESIS_HASH`. Changing any
stored column changes that entry's hash; removing or reordering entries breaks the next entry's
`prev_hash`.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import PurePath
from typing import Any
from uuid import UUID

from pydantic import BaseModel

__all__ = [
    "GENESIS_HASH",
    "HASHED_COLUMNS",
    "ChainCheck",
    "VerifyResult",
    "canonical",
    "entry_hash",
    "format_at",
    "is_secret_key",
    "redact",
    "to_json_value",
]

GENESIS_HASH = "0" * 64
HASHED_COLUMNS = (
    "id",
    "at",
    "actor",
    "actor_kind",
    "key_id",
    "team",
    "action",
    "target",
    "outcome",
    "source_ip",
    "request_id",
    "before",
    "after",
    "detail",
    "prev_hash",
)

# Key names whose values are credentials. Compared after lower-casing and turning every run of
# non-alphanumerics into "_", so `X-Api-Key`, `apiKey` and `client_secret` all match. `token`
# only as a whole name or suffix: `max_tokens` and `tokens_per_day` are limits, not secrets.
_SECRET_NAMES = frozenset({"token", "authorization", "api_key", "apikey", "cookie", "set_cookie"})
_SECRET_PARTS = ("secret", "password", "passwd")
_SECRET_SUFFIXES = ("_token", "_api_key", "_apikey", "_authorization")
_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def is_secret_key(key: object) -> bool:
    name = _NON_ALNUM.sub("_", _CAMEL.sub("_", str(key)).lower()).strip("_")
    return (
        name in _SECRET_NAMES
        or name.endswith(_SECRET_SUFFIXES)
        or any(part in name for part in _SECRET_PARTS)
    )


def redact(value: Any) -> Any:
    """`value` without the mapping keys that name secrets (api_key, password, token,
    secret_hash, authorization, ...), at any depth. Other values are returned as they are."""
    if isinstance(value, Mapping):
        return {key: redact(item) for key, item in value.items() if not is_secret_key(key)}
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    return value


def _text(value: str) -> str:
    # PostgreSQL text and JSON cannot hold NUL, and lone surrogates have no UTF-8 form: both
    # are replaced here, before hashing, so the stored and the hashed text are the same.
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def to_json_value(value: Any) -> Any:
    """`value` as plain JSON data (dict with str keys, list, str, int, float, bool, None) that
    survives a round trip through a JSON column unchanged, so what `verify` reads back hashes
    as it did when it was written.

    Datetimes become ISO-8601 UTC text, Decimals and UUIDs text, sets sorted lists, pydantic
    models and dataclasses their fields, non-finite floats the text "NaN"/"Infinity"/"-Infinity";
    anything else unknown its `str()`.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, enum.Enum):
        return to_json_value(value.value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return float(value)
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, str):
        return _text(str(value))
    if isinstance(value, datetime):
        return format_at(value)
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal | UUID | PurePath):
        return _text(str(value))
    if isinstance(value, bytes | bytearray | memoryview):
        return _text(bytes(value).decode("utf-8", "replace"))
    if isinstance(value, BaseModel):
        return to_json_value(value.model_dump(mode="json"))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_json_value({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    if isinstance(value, Mapping):
        # JSON keys are text: 1 and "1" would both be "1" after a round trip anyway.
        return {_text(str(key)): to_json_value(item) for key, item in value.items()}
    if isinstance(value, set | frozenset):
        items = [to_json_value(item) for item in value]
        return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))
    if isinstance(value, list | tuple):
        return [to_json_value(item) for item in value]
    return _text(str(value))


def format_at(at: datetime) -> str:
    """ISO-8601 in UTC with microseconds; a naive time is taken as UTC (SQLite keeps no
    offset, and every entry is written in UTC)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def canonical(entry: Mapping[str, Any]) -> bytes:
    """The bytes an entry is hashed as: the hashed columns as JSON with sorted keys, no
    whitespace, non-ASCII as UTF-8, `at` as `format_at` text."""
    body = {name: entry.get(name) for name in HASHED_COLUMNS}
    at = body["at"]
    if isinstance(at, datetime):
        body["at"] = format_at(at)
    text = json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")


def entry_hash(entry: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(entry)).hexdigest()


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    # Entries examined, the broken one included.
    checked: int
    first_broken_seq: int | None
    reason: str | None
    # The newest entry's hash when the chain is intact. Kept outside Keel (a ticket, a signed
    # note), it also proves later that no entries were cut from the end.
    head_hash: str | None = None


class ChainCheck:
    """Feed entries in seq order to `add`; it returns False at the first broken one."""

    def __init__(self) -> None:
        self.checked = 0
        self._prev_seq: int | None = None
        self._prev_hash = GENESIS_HASH
        self._broken: tuple[int, str] | None = None

    def add(self, entry: Mapping[str, Any]) -> bool:
        if self._broken is not None:
            return False
        self.checked += 1
        seq = int(entry["seq"])
        try:
            recomputed: str | None = entry_hash(entry)
        except (TypeError, ValueError):
            recomputed = None  # a stored value JSON cannot hold was put there by hand
        if recomputed is None or recomputed != entry.get("hash"):
            self._broken = (seq, "hash mismatch: the entry was modified")
        elif entry.get("prev_hash") != self._prev_hash:
            if self._prev_seq is None:
                reason = "prev_hash is not the genesis hash: earlier entries were removed"
            else:
                reason = (
                    f"prev_hash does not match entry {self._prev_seq}: "
                    "an entry was removed or reordered"
                )
            self._broken = (seq, reason)
        else:
            self._prev_seq = seq
            self._prev_hash = str(entry["hash"])
            return True
        return False

    def result(self) -> VerifyResult:
        if self._broken is not None:
            seq, reason = self._broken
            return VerifyResult(False, self.checked, seq, reason)
        head = self._prev_hash if self.checked else None
        return VerifyResult(True, self.checked, None, None, head)
