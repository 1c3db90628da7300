"""Versioned datasets: rows from JSONL, CSV or Parquet files, from Python, or from production
traffic (captured payloads, selected by model, time window and feedback label, PII masked by
the governance policy), with named splits.

A version is identified by the sha256 digest of a canonical serialization of its splits and
rows, and numbered per dataset name (1, 2, ...); adding content that an existing version
already holds returns that version. Rows live in the database (`dataset_rows`, one JSON value
per row), so a remote server and PostgreSQL replicas all see the same data.
"""

from __future__ import annotations

import builtins
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Row, func, insert, select
from sqlalchemy.exc import IntegrityError

from keel.errors import ConflictError, InvalidRequestError, NotFoundError
from keel.store.database import Database
from keel.tracking import library_tables as t
from keel.tracking.dataset_files import columns_of, json_safe, read_rows
from keel.tracking.references import canonical_digest, checked_name, split_ref, utc

__all__ = [
    "DEFAULT_SPLIT",
    "MAX_ROWS",
    "DatasetStore",
    "DatasetSummary",
    "DatasetVersion",
    "split_rows",
]

DEFAULT_SPLIT = "default"
MAX_ROWS = 1_000_000
_INSERT_CHUNK = 1000
_D, _V, _R = t.datasets.c, t.dataset_versions.c, t.dataset_rows.c


@dataclass(slots=True)
class DatasetVersion:
    name: str
    version: int
    digest: str
    splits: dict[str, int]
    columns: list[str]
    source: dict[str, Any] = field(default_factory=dict)
    description: str | None = None
    created_by: str = "system"
    created_at: datetime | None = None
    # False when `add_*` found the same content already stored as this version.
    created: bool = True
    _load: Callable[[str | None], list[dict[str, Any]]] | None = field(default=None, repr=False)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def row_count(self) -> int:
        return sum(self.splits.values())

    def rows(self, split: str | None = None) -> list[dict[str, Any]]:
        """The rows of one split, or of every split in order."""
        if split is not None and split not in self.splits:
            raise NotFoundError(
                f"dataset {self.ref} has no split {split!r} (it has {', '.join(self.splits)})"
            )
        if self._load is None:
            raise InvalidRequestError("this dataset version was not loaded from a store")
        return self._load(split)


@dataclass(slots=True)
class DatasetSummary:
    name: str
    latest_version: int
    versions: int
    digest: str
    splits: dict[str, int]
    columns: list[str]
    description: str | None
    created_by: str
    created_at: datetime


def split_rows(
    rows: list[dict[str, Any]], fractions: dict[str, float]
) -> dict[str, list[dict[str, Any]]]:
    """A deterministic split by fractions ({"train": 0.8, "test": 0.2}): rows are ordered by
    the digest of their content, so the same rows always land in the same splits whatever
    order they came in; each split keeps the rows' original order."""
    if not fractions:
        raise InvalidRequestError("splits: name at least one split", param="splits")
    for name, fraction in fractions.items():
        _checked_split(name)
        if not isinstance(fraction, int | float) or not 0 < fraction <= 1:
            raise InvalidRequestError(
                f"splits.{name}: a fraction in (0, 1], got {fraction!r}", param=f"splits.{name}"
            )
    if abs(sum(fractions.values()) - 1) > 1e-6:
        raise InvalidRequestError("splits: the fractions must add up to 1", param="splits")
    keys = sorted(
        range(len(rows)),
        key=lambda i: (hashlib.sha256(_canonical(rows[i]).encode()).hexdigest(), i),
    )
    assigned: dict[int, str] = {}
    start = 0
    names = list(fractions)
    for position, name in enumerate(names):
        end = (
            len(rows) if position == len(names) - 1 else start + round(len(rows) * fractions[name])
        )
        for index in keys[start:end]:
            assigned[index] = name
        start = end
    return {name: [row for i, row in enumerate(rows) if assigned[i] == name] for name in names}


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _checked_split(name: Any) -> str:
    if (
        not isinstance(name, str)
        or not name
        or name != name.strip()
        or len(name) > 255
        or "\x00" in name
    ):
        raise InvalidRequestError(f"invalid split name {name!r}", param="splits")
    return name


class DatasetStore:
    def __init__(
        self,
        database: Database,
        home: Path | None = None,
        *,
        mask: Callable[[str], str] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """`mask` is the governance policy's PII masking for stored text (the server passes
        `Guardrails.mask_for_storage`); rows drawn from production go through it. `home` is
        where relative file paths are looked up when they are not found as given."""
        self.database = database
        self.home = home
        self.mask = mask
        self._clock = clock

    # --- writes -----------------------------------------------------------------------------

    def add_file(
        self,
        name: str,
        path: str | Path,
        *,
        format: str | None = None,
        split: str | None = None,
        splits: dict[str, float] | None = None,
        description: str | None = None,
        actor: str = "system",
    ) -> DatasetVersion:
        """A version from a JSONL, CSV or Parquet file (format from the suffix unless named):
        all rows in `split` (default "default"), or divided by `splits` fractions."""
        file = Path(path)
        if not file.exists() and not file.is_absolute() and self.home is not None:
            file = self.home / file
        rows = read_rows(file, format)
        source = {"kind": "file", "file": file.name, "format": format or file.suffix.lstrip(".")}
        payload: builtins.list[dict[str, Any]] | dict[str, builtins.list[dict[str, Any]]] = rows
        if split is not None and splits is None:
            payload = {split: rows}
        return self.add_rows(
            name, payload, splits=splits, description=description, source=source, actor=actor
        )

    def add_rows(
        self,
        name: str,
        rows: builtins.list[dict[str, Any]] | dict[str, builtins.list[dict[str, Any]]],
        *,
        splits: dict[str, float] | None = None,
        description: str | None = None,
        source: dict[str, Any] | None = None,
        actor: str = "system",
    ) -> DatasetVersion:
        """A version from rows: a list (one "default" split, or divided by `splits`
        fractions) or a mapping of split name → rows."""
        checked_name(name, "dataset")
        by_split = self._by_split(rows, splits)
        digest = canonical_digest({"splits": by_split})
        counts = {split: len(items) for split, items in by_split.items()}
        columns = columns_of(row for items in by_split.values() for row in items)
        for _ in range(3):
            try:
                return self._insert(
                    name,
                    by_split,
                    digest,
                    counts,
                    columns,
                    source or {"kind": "rows"},
                    description,
                    actor,
                )
            except IntegrityError:  # a concurrent writer took the name or the number
                continue
        raise ConflictError(f"could not add a version to dataset {name!r}: too many writers")

    def add_from_production(
        self,
        name: str,
        *,
        model: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        label: str | None = None,
        thumbs: str | None = None,
        feedback_name: str | None = None,
        limit: int = 1000,
        split: str | None = None,
        splits: dict[str, float] | None = None,
        description: str | None = None,
        actor: str = "system",
    ) -> DatasetVersion:
        """A version from captured production calls (`request_payloads`, written when payload
        capture is on), oldest first: the calls of `model` in [since, until), optionally only
        those with feedback `label` / `thumbs` (and feedback `feedback_name`). Text is masked by
        the PII store policy before it is stored."""
        from keel.tracking.production import production_rows

        if not 1 <= limit <= MAX_ROWS:
            raise InvalidRequestError(f"limit: 1 to {MAX_ROWS}", param="limit")
        rows = production_rows(
            self.database,
            model=model,
            since=since,
            until=until,
            label=label,
            thumbs=thumbs,
            feedback_name=feedback_name,
            limit=limit,
            mask=self.mask,
        )
        if not rows:
            raise NotFoundError(
                "no captured production calls match the filter (payload capture must be on "
                "for the model: drift.capture)",
                code="no_rows",
            )
        source: dict[str, Any] = {"kind": "production", "limit": limit}
        for key, value in (
            ("model", model),
            ("since", since),
            ("until", until),
            ("label", label),
            ("thumbs", thumbs),
            ("feedback_name", feedback_name),
        ):
            if value is not None:
                source[key] = value.isoformat() if isinstance(value, datetime) else value
        payload: builtins.list[dict[str, Any]] | dict[str, builtins.list[dict[str, Any]]] = rows
        if split is not None and splits is None:
            payload = {split: rows}
        return self.add_rows(
            name, payload, splits=splits, description=description, source=source, actor=actor
        )

    # --- reads ------------------------------------------------------------------------------

    def get(self, ref: str) -> DatasetVersion:
        """`name` or `name@latest` (the newest version), or `name@3`."""
        name, at = split_ref(ref, "dataset")
        if at is not None and not isinstance(at, int) and at != "latest":
            raise InvalidRequestError(
                f"{ref!r}: a dataset version is a number or 'latest'", param="ref"
            )
        with self.database.engine.connect() as conn:
            self._dataset_row(conn, name)
            number = at if isinstance(at, int) else self._latest(conn, name)
            return self._version_of(self._version_row(conn, name, number))

    def versions(self, name: str) -> builtins.list[DatasetVersion]:
        with self.database.engine.connect() as conn:
            self._dataset_row(conn, name)
            query = select(t.dataset_versions).where(_V.dataset == name).order_by(_V.version)
            return [self._version_of(row) for row in conn.execute(query)]

    def list(self) -> builtins.list[DatasetSummary]:
        with self.database.engine.connect() as conn:
            names = list(conn.execute(select(t.datasets).order_by(_D.name)))
            versions = list(conn.execute(select(t.dataset_versions).order_by(_V.version)))
        found = []
        for row in names:
            own = [version for version in versions if version.dataset == row.name]
            if not own:
                continue
            latest = own[-1]
            found.append(
                DatasetSummary(
                    name=row.name,
                    latest_version=latest.version,
                    versions=len(own),
                    digest=latest.digest,
                    splits=dict(latest.splits),
                    columns=list(latest.columns),
                    description=latest.description,
                    created_by=row.created_by,
                    created_at=utc(row.created_at),
                )
            )
        return found

    def read_rows(
        self,
        name: str,
        version: int,
        split: str | None = None,
        *,
        offset: int = 0,
        limit: int | None = None,
    ) -> builtins.list[dict[str, Any]]:
        """A page of a version's rows (of one split, or of all in split order)."""
        with self.database.engine.connect() as conn:
            row = self._version_row(conn, name, version)
            if split is not None and split not in row.splits:
                raise NotFoundError(f"dataset {name}@{version} has no split {split!r}")
            query = select(_R.data).where(_R.version_id == row.id)
            if split is not None:
                query = query.where(_R.split == split)
            else:
                # Splits in the order they were given: a CASE over the stored order.
                from sqlalchemy import case

                order = {name: position for position, name in enumerate(row.splits)}
                query = query.order_by(case(order, value=_R.split, else_=len(order)))
            query = query.order_by(_R.position).offset(offset)
            if limit is not None:
                query = query.limit(limit)
            return [data for (data,) in conn.execute(query)]

    # --- plumbing ---------------------------------------------------------------------------

    def _by_split(
        self,
        rows: builtins.list[dict[str, Any]] | dict[str, builtins.list[dict[str, Any]]],
        fractions: dict[str, float] | None,
    ) -> dict[str, builtins.list[dict[str, Any]]]:
        if isinstance(rows, dict):
            if fractions is not None:
                raise InvalidRequestError(
                    "splits: give rows by split or fractions to split them by, not both",
                    param="splits",
                )
            by_split = {
                _checked_split(split): self._checked_rows(items, split)
                for split, items in rows.items()
            }
        elif isinstance(rows, list):
            checked = self._checked_rows(rows, None)
            by_split = (
                split_rows(checked, fractions)
                if fractions is not None
                else {DEFAULT_SPLIT: checked}
            )
        else:
            raise InvalidRequestError(
                "rows: a list of objects or an object of split → rows", param="rows"
            )
        if not any(by_split.values()):
            raise InvalidRequestError("a dataset version needs at least one row", param="rows")
        if sum(len(items) for items in by_split.values()) > MAX_ROWS:
            raise InvalidRequestError(f"rows: at most {MAX_ROWS} per version", param="rows")
        return by_split

    @staticmethod
    def _checked_rows(rows: Any, split: str | None) -> builtins.list[dict[str, Any]]:
        where = f"rows.{split}" if split is not None else "rows"
        if not isinstance(rows, list):
            raise InvalidRequestError(f"{where}: a list of objects", param=where)
        checked = []
        for index, row in enumerate(rows):
            if not isinstance(row, dict):
                raise InvalidRequestError(f"{where}[{index}]: not an object", param=where)
            checked.append(json_safe(row))
        return checked

    def _insert(
        self,
        name: str,
        by_split: dict[str, builtins.list[dict[str, Any]]],
        digest: str,
        counts: dict[str, int],
        columns: builtins.list[str],
        source: dict[str, Any],
        description: str | None,
        actor: str,
    ) -> DatasetVersion:
        with self.database.engine.begin() as conn:
            now = self._clock()
            exists = conn.execute(select(_D.name).where(_D.name == name).with_for_update()).first()
            if exists is None:
                conn.execute(
                    insert(t.datasets).values(
                        name=name, description=description, created_by=actor, created_at=now
                    )
                )
            same = conn.execute(
                select(t.dataset_versions).where(_V.dataset == name, _V.digest == digest)
            ).first()
            if same is not None:
                found = self._version_of(same)
                found.created = False
                return found
            top = conn.execute(select(func.max(_V.version)).where(_V.dataset == name)).scalar_one()
            values = {
                "dataset": name,
                "version": (top or 0) + 1,
                "digest": digest,
                "splits": counts,
                "columns": columns,
                "source": json_safe(source),
                "description": description,
                "created_by": actor,
                "created_at": now,
            }
            inserted = conn.execute(insert(t.dataset_versions).values(**values))
            version_id = inserted.inserted_primary_key[0] if inserted.inserted_primary_key else None
            batch: builtins.list[dict[str, Any]] = []
            for split, items in by_split.items():
                for position, row in enumerate(items):
                    batch.append(
                        {
                            "version_id": version_id,
                            "split": split,
                            "position": position,
                            "data": row,
                        }
                    )
                    if len(batch) >= _INSERT_CHUNK:
                        conn.execute(insert(t.dataset_rows), batch)
                        batch = []
            if batch:
                conn.execute(insert(t.dataset_rows), batch)
        return self._loaded(
            DatasetVersion(
                name,
                values["version"],
                digest,
                counts,
                columns,
                values["source"],
                description,
                actor,
                now,
            )
        )

    def _loaded(self, version: DatasetVersion) -> DatasetVersion:
        name, number = version.name, version.version
        version._load = lambda split: self.read_rows(name, number, split)
        return version

    def _dataset_row(self, conn: Connection, name: str) -> Row[Any]:
        row = conn.execute(select(t.datasets).where(_D.name == name)).first()
        if row is None:
            raise NotFoundError(f"dataset {name!r} not found")
        return row

    def _latest(self, conn: Connection, name: str) -> int:
        found: int = conn.execute(
            select(func.max(_V.version)).where(_V.dataset == name)
        ).scalar_one()
        return found

    def _version_row(self, conn: Connection, name: str, number: int) -> Row[Any]:
        self._dataset_row(conn, name)
        query = select(t.dataset_versions).where(_V.dataset == name, _V.version == number)
        row = conn.execute(query).first()
        if row is None:
            raise NotFoundError(f"dataset {name!r} has no version {number}")
        return row

    def _version_of(self, row: Row[Any]) -> DatasetVersion:
        return self._loaded(
            DatasetVersion(
                name=row.dataset,
                version=row.version,
                digest=row.digest,
                splits=dict(row.splits),
                columns=list(row.columns),
                source=dict(row.source),
                description=row.description,
                created_by=row.created_by,
                created_at=utc(row.created_at),
            )
        )
