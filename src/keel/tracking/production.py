"""Dataset rows from production: captured payloads (`request_payloads`, written when payload
capture is on) joined with feedback, selected by model, time window and feedback label."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import select

from keel.errors import InvalidRequestError
from keel.store.database import Database

__all__ = ["production_rows"]

_THUMBS = ("up", "down")
_CHUNK = 500


def production_rows(
    database: Database,
    *,
    model: str | None,
    since: datetime | None,
    until: datetime | None,
    label: str | None,
    thumbs: str | None,
    feedback_name: str | None,
    limit: int,
    mask: Callable[[str], str] | None,
) -> list[dict[str, Any]]:
    """One row per captured call, oldest first: `input`, `output`, `expected` (the feedback's
    expected answer or correction), `label`, `thumbs`, `score`, `model`, `registry_version`,
    `request_id`, `created_at`. Texts go through `mask` (the PII store policy)."""
    from keel.monitoring.feedback_tables import feedback
    from keel.monitoring.payload_tables import request_payloads

    if thumbs is not None and thumbs not in _THUMBS:
        raise InvalidRequestError("thumbs: up or down", param="thumbs")
    if since is not None and until is not None and since >= until:
        raise InvalidRequestError("since must be before until", param="since")
    p, f = request_payloads.c, feedback.c
    query = select(request_payloads).where(p.input_text.is_not(None))
    if model is not None:
        query = query.where(p.model == model)
    if since is not None:
        query = query.where(p.created_at >= since)
    if until is not None:
        query = query.where(p.created_at < until)
    feedback_filter = []
    if label is not None:
        feedback_filter.append(f.label == label)
    if thumbs is not None:
        feedback_filter.append(f.thumbs == thumbs)
    if feedback_name is not None:
        feedback_filter.append(f.name == feedback_name)
    if feedback_filter:
        query = query.where(p.request_id.in_(select(f.request_id).where(*feedback_filter)))
    query = query.order_by(p.created_at, p.request_id).limit(limit)
    with database.engine.connect() as conn:
        payloads = list(conn.execute(query))
        ids = [row.request_id for row in payloads]
        notes: dict[str, Any] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            found = select(feedback).where(f.request_id.in_(chunk), *feedback_filter)
            # The latest word on a call wins when it has several (sources, names).
            for found_note in conn.execute(found.order_by(f.updated_at, f.id)):
                notes[found_note.request_id] = found_note
    rows = []
    for payload in payloads:
        note = notes.get(payload.request_id)
        expected = None
        if note is not None:
            expected = note.expected if note.expected is not None else note.correction
        rows.append(
            {
                "input": _masked(payload.input_text, mask),
                "output": _masked(payload.output_text, mask),
                "expected": _masked(expected, mask),
                "label": note.label if note is not None else None,
                "thumbs": note.thumbs if note is not None else None,
                "score": note.score if note is not None else None,
                "model": payload.model,
                "registry_version": payload.registry_version,
                "request_id": payload.request_id,
                "created_at": payload.created_at.isoformat(),
            }
        )
    return rows


def _masked(text: str | None, mask: Callable[[str], str] | None) -> str | None:
    # Capture masked under the policy already; masking again covers feedback text and any
    # change of policy since (a masked placeholder is not PII, so it stays as it is).
    return mask(text) if text and mask is not None else text
