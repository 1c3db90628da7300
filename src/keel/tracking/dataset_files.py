"""Reading and writing dataset rows as JSONL, CSV or Parquet; values made JSON-safe.

Used by the store (server side) and by the SDK and CLI (client side, so a file on the
caller's machine reaches a remote server as JSON rows). pyarrow is imported only for Parquet.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
from collections.abc import Iterable
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from keel.errors import InvalidRequestError

__all__ = [
    "FORMATS",
    "Format",
    "columns_of",
    "detect_format",
    "json_safe",
    "read_rows",
    "write_rows",
]

Format = Literal["jsonl", "csv", "parquet"]
FORMATS: tuple[Format, ...] = ("jsonl", "csv", "parquet")
_SUFFIXES: dict[str, Format] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def detect_format(path: Path, format: str | None = None) -> Format:
    if format is not None:
        if format not in FORMATS:
            raise InvalidRequestError(
                f"format: one of {', '.join(FORMATS)}, got {format!r}", param="format"
            )
        return format
    found = _SUFFIXES.get(path.suffix.lower())
    if found is None:
        raise InvalidRequestError(
            f"{path.name}: cannot tell the format from the suffix; name it ({', '.join(FORMATS)})",
            param="format",
        )
    return found


def json_safe(value: Any) -> Any:
    """`value` as something JSON (and PostgreSQL's json type) holds: dates as ISO text,
    decimals and bytes as text, NaN and infinities as null."""
    if isinstance(value, str):
        # NUL and lone surrogates: no database text column can hold them.
        return value.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {json_safe(str(key)): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(item) for item in value]
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    return str(value)


def read_rows(path: Path, format: str | None = None) -> list[dict[str, Any]]:
    """The rows of a dataset file; a malformed file is an InvalidRequestError naming the line."""
    kind = detect_format(path, format)
    if not path.is_file():
        raise InvalidRequestError(f"{path}: no such file", param="path")
    if kind == "parquet":
        return _read_parquet(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(
            f"{path.name}: not UTF-8 text ({exc.reason})", param="path"
        ) from None
    return _read_jsonl(text, path.name) if kind == "jsonl" else _read_csv(text, path.name)


def _read_jsonl(text: str, label: str) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise InvalidRequestError(
                f"{label} line {number}: not JSON: {exc}", param="path"
            ) from None
        if not isinstance(value, dict):
            raise InvalidRequestError(f"{label} line {number}: not a JSON object", param="path")
        rows.append(json_safe(value))
    return rows


def _read_csv(text: str, label: str) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames:
        raise InvalidRequestError(f"{label}: no header row", param="path")
    rows = []
    try:
        for row in reader:
            if None in row:  # more cells than the header names
                raise InvalidRequestError(
                    f"{label} line {reader.line_num}: more fields than the header has", param="path"
                )
            rows.append({key: value if value is not None else "" for key, value in row.items()})
    except csv.Error as exc:
        raise InvalidRequestError(f"{label} line {reader.line_num}: {exc}", param="path") from None
    return rows


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise InvalidRequestError(
            f"{path.name}: not a readable Parquet file: {exc}", param="path"
        ) from None
    return [json_safe(row) for row in table.to_pylist()]


def columns_of(rows: Iterable[dict[str, Any]]) -> list[str]:
    """Every field name, in the order first seen."""
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    return list(seen)


def write_rows(path: Path, rows: list[dict[str, Any]], format: str | None = None) -> Format:
    """Write rows as JSONL, CSV (nested values as JSON text) or Parquet."""
    kind = detect_format(path, format)
    if kind == "jsonl":
        with path.open("w", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif kind == "csv":
        with path.open("w", encoding="utf-8", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=columns_of(rows))
            writer.writeheader()
            for row in rows:
                writer.writerow({key: _cell(value) for key, value in row.items()})
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = columns_of(rows)
        try:
            table = pa.Table.from_pylist([{key: row.get(key) for key in columns} for row in rows])
        except pa.ArrowException as exc:
            raise InvalidRequestError(
                f"cannot write these rows as Parquet (a column mixes types?): {exc}",
                param="format",
            ) from None
        pq.write_table(table, path)
    return kind


def _cell(value: Any) -> Any:
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else value
