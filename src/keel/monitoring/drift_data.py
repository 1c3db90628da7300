"""What a drift report compares, read from the store: one side's token lengths, rates and a
sample of embeddings, for a model over a time window or for a benchmark run."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, Connection, Text, and_, cast, or_, select

from keel.monitoring.payload_tables import request_payloads
from keel.store.schema import request_records

__all__ = ["Side", "Target", "load_side"]

_RECORDS, _PAYLOADS = request_records.c, request_payloads.c
_CHUNK = 500  # ids bound per IN (...) query
_CLIENT_CLOSED = 499


@dataclass(frozen=True, slots=True)
class Target:
    """Which traffic a report is about. `version` pins one registry version ("name@3");
    `registry` says whether `model` is a registry model (else a gateway model id)."""

    model: str
    version: str | None = None
    registry: bool = False

    def matches(self, model_column: Any, version_column: Any) -> ColumnElement[bool]:
        if self.version is not None:
            return version_column == self.version  # type: ignore[no-any-return]
        if self.registry:
            return or_(
                version_column.startswith(f"{self.model}@", autoescape=True),
                model_column == self.model,
            )
        return model_column == self.model  # type: ignore[no-any-return]


@dataclass(slots=True)
class Side:
    """One side of the comparison."""

    count: int = 0
    input_tokens: Any = field(default_factory=lambda: np.empty(0))
    output_tokens: Any = field(default_factory=lambda: np.empty(0))
    errors: int = 0
    refusals: int = 0
    pii_hits: int = 0
    input_embeddings: Any = None  # (n, d) float32, a sample
    output_embeddings: Any = None


def load_side(
    conn: Connection,
    target: Target,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    run_id: str | None = None,
    sample: int = 1000,
    seed: int = 0,
) -> Side:
    """A window of the target's traffic (`start` inclusive, `end` exclusive), or, with
    `run_id`, the requests of that benchmark run."""
    if run_id is not None:
        run_ids = select(_PAYLOADS.request_id).where(_PAYLOADS.run_id == run_id)
        record_filter: ColumnElement[bool] = _RECORDS.id.in_(run_ids)
        payload_filter: ColumnElement[bool] = _PAYLOADS.run_id == run_id
    else:
        assert start is not None and end is not None
        record_filter = and_(
            target.matches(_RECORDS.model_requested, _RECORDS.registry_version),
            _RECORDS.created_at >= start,
            _RECORDS.created_at < end,
        )
        payload_filter = and_(
            target.matches(_PAYLOADS.model, _PAYLOADS.registry_version),
            _PAYLOADS.created_at >= start,
            _PAYLOADS.created_at < end,
        )
    side = Side()
    refused = _read_records(conn, record_filter, side)
    _read_payloads(conn, payload_filter, side, refused, sample=sample, seed=seed)
    return side


def _read_records(conn: Connection, where: ColumnElement[bool], side: Side) -> set[str]:
    """Fill in what the request records tell; return the ids of refused requests."""
    query = select(_RECORDS.prompt_tokens, _RECORDS.completion_tokens, _RECORDS.status_code)
    rows = _plain_rows(conn, query.where(where))
    side.count = len(rows)
    if rows:
        # None becomes NaN: a record without usage (a failed call) has no length to compare.
        table = np.array(rows, dtype=np.float64)
        side.input_tokens = table[:, 0][~np.isnan(table[:, 0])]
        side.output_tokens = table[:, 1][~np.isnan(table[:, 1])]
        status = table[:, 2]
        side.errors = int(np.count_nonzero((status >= 400) & (status != _CLIENT_CLOSED)))
    # Guardrail decisions, as text: most records have none (JSON null), and decoding a null
    # per record would cost more than everything else here.
    decided = select(_RECORDS.id, _RECORDS.status_code, cast(_RECORDS.guardrails, Text)).where(
        where, _RECORDS.guardrails.is_not(None), cast(_RECORDS.guardrails, Text) != "null"
    )
    refused: set[str] = set()
    for record_id, status, text in conn.execute(decided).all():
        decisions = json.loads(text) if text else None
        if not isinstance(decisions, list):
            continue
        decisions = [d for d in decisions if isinstance(d, dict)]
        if any(d.get("kind") == "pii" and d.get("findings") for d in decisions):
            side.pii_hits += 1
        if any(d.get("action") == "block" and d.get("enforced", True) for d in decisions):
            refused.add(record_id)
            if status >= 400 and status != _CLIENT_CLOSED:
                side.errors -= 1  # a refusal, counted apart from errors
    side.refusals = len(refused)
    return refused


def _read_payloads(
    conn: Connection,
    where: ColumnElement[bool],
    side: Side,
    refused: set[str],
    *,
    sample: int,
    seed: int,
) -> None:
    # Answers the provider filtered count as refusals too (they are only known for calls
    # whose payload was captured). Rare, and found through their index.
    filtered = conn.execute(
        select(_PAYLOADS.request_id).where(where, _PAYLOADS.finish_reason == "content_filter")
    ).scalars()
    side.refusals += sum(1 for request_id in filtered if request_id not in refused)
    # Vectors are read for a seeded uniform sample only: reading every blob of a busy window
    # would cost far more than the sample tells apart. The few payloads stored without
    # vectors (the embedding model failed) simply contribute none.
    ids = sorted(row[0] for row in _plain_rows(conn, select(_PAYLOADS.request_id).where(where)))
    if not ids:
        return
    if len(ids) > sample:
        chosen = np.random.default_rng(seed).choice(len(ids), size=sample, replace=False)
        ids = [ids[index] for index in sorted(chosen)]
    inputs: list[Any] = []
    outputs: list[Any] = []
    for offset in range(0, len(ids), _CHUNK):
        chunk = ids[offset : offset + _CHUNK]
        query = select(_PAYLOADS.input_embedding, _PAYLOADS.output_embedding).where(
            _PAYLOADS.request_id.in_(chunk)
        )
        for input_blob, output_blob in conn.execute(query).all():
            if input_blob:
                inputs.append(np.frombuffer(input_blob, dtype="<f4"))
            if output_blob:
                outputs.append(np.frombuffer(output_blob, dtype="<f4"))
    side.input_embeddings = _stack(inputs)
    side.output_embeddings = _stack(outputs)


def _plain_rows(conn: Connection, query: Any) -> list[tuple[Any, ...]]:
    """The driver's own tuples, for columns that need no conversion (numbers, strings):
    building a Row per record would take longer than the query for a busy window."""
    result = conn.execute(query)
    try:
        rows = [tuple(row) for row in result.cursor.fetchall()]
    finally:
        result.close()
    return rows


def _stack(vectors: list[Any]) -> Any:
    if not vectors:
        return None
    size = len(vectors[0])
    same = [vector for vector in vectors if len(vector) == size]
    return np.stack(same).astype(np.float64)
